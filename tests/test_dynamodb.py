"""`DynamoDBSaver` against DynamoDB Local: the conformance suite with and without AES, a thread
continued by a fresh saver, values far over DynamoDB's 400 KB item limit, ciphertext at rest,
receipts and records, pruning of delta-stored transcripts, and all-or-nothing puts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver

from tests.fixtures.checkpointers import (
    assert_fully_conformant,
    human_texts,
    offline_agent,
    receipt_of,
    stored_turn,
    take_turns,
    thread_config,
    thread_record,
)
from threadline.audit import AuditLog
from threadline.checkpointers.durable import CheckpointStoreUnavailable
from threadline.checkpointers.dynamodb import DynamoDBSaver
from threadline.checkpointers.dynamodb.bookkeeping import update_actions, upsert_actions
from threadline.checkpointers.dynamodb.table import Action, StoreError, Table
from threadline.checkpointers.receipts import receipts_metadata
from threadline.checkpointers.records import (
    ARCHIVED,
    LIVE,
    RecordQuery,
    ThreadRecord,
    record_metadata,
)
from threadline.checkpointers.serde import MisplacedValueError, make_serializer
from threadline.dev.services import DYNAMODB_LOCAL_CREDENTIALS, dynamodb_client, free_port
from threadline.retention import ThreadKeeper
from threadline.retention.archive import open_archive

AES_KEY = "conformance-key-0123456789abcdef"[:32]
MB = 1024 * 1024
Opener = Callable[..., Any]


@pytest.fixture
def ddb(dynamodb_endpoint: str) -> Any:
    return dynamodb_client(dynamodb_endpoint)


@pytest.fixture
def open_saver(ddb: Any) -> Iterator[Opener]:
    """`open_saver(serde=None, table=None)`: a saver on a fresh table (or on `table`)."""
    tables: set[str] = set()

    @asynccontextmanager
    async def factory(serde: Any = None, table: str | None = None) -> AsyncIterator[DynamoDBSaver]:
        name = table or f"t_{uuid.uuid4().hex[:12]}"
        saver = DynamoDBSaver(ddb, name, serde=serde)
        await saver.setup()
        tables.add(name)
        try:
            yield saver
        finally:
            saver.close()

    yield factory
    for name in tables:
        ddb.delete_table(TableName=name)


def raw_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def orphan_chunks(items: list[dict[str, Any]]) -> list[str]:
    """Chunk items whose owner item is gone."""
    keys = {(i["pk"]["S"], i["sk"]["S"]) for i in items}
    return [
        i["sk"]["S"]
        for i in items
        if i["kind"]["S"] == "k" and (i["pk"]["S"], i["sk"]["S"][1:].rsplit("#", 3)[0]) not in keys
    ]


def kinds(ddb: Any, table: str) -> list[str]:
    return sorted(i["kind"]["S"] for i in raw_items(ddb, table))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
async def test_conformance_is_full(encrypted: bool, open_saver: Opener) -> None:
    serde = make_serializer(AES_KEY if encrypted else None)
    name = f"DynamoDBSaver{' (AES)' if encrypted else ''}"
    await assert_fully_conformant(name, lambda: open_saver(serde=serde))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
async def test_a_fresh_saver_continues_a_three_turn_thread(
    encrypted: bool, open_saver: Opener, ddb: Any
) -> None:
    serde = make_serializer(AES_KEY if encrypted else None)
    config = thread_config("ddb")
    async with open_saver(serde=serde) as saver:
        await take_turns(offline_agent(saver), config, ["one", "two", "three"])
        table = saver.table.name
    # A new client and saver, as after a restart.
    fresh_client = dynamodb_client(ddb.meta.endpoint_url)
    fresh = DynamoDBSaver(
        fresh_client, table, serde=make_serializer(AES_KEY if encrypted else None)
    )
    try:
        graph = offline_agent(fresh)
        assert human_texts(await graph.aget_state(config)) == ["one", "two", "three"]
        await take_turns(graph, config, ["four"])
        assert human_texts(await graph.aget_state(config)) == ["one", "two", "three", "four"]
        history = [s async for s in graph.aget_state_history(config)]
        assert len(history) >= 4
    finally:
        fresh.close()


@pytest.mark.parametrize("size_mb", [1, 5], ids=["1MB-one-transaction", "5MB-chunks-first"])
async def test_a_message_far_over_the_item_limit_does_not_break_the_thread(
    size_mb: int, open_saver: Opener, ddb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = "x" * (size_mb * MB)
    config = thread_config("big")
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        ahead: list[int] = []
        put_many = saver.table.put_many
        monkeypatch.setattr(
            saver.table, "put_many", lambda items: (ahead.append(len(items)), put_many(items))
        )
        await take_turns(graph, config, ["hello", big, "after"])
        # 1 MB fits one transaction with its chunks; 5 MB has its chunks written first.
        assert bool(ahead) == (size_mb > 3)
        assert "k" in kinds(ddb, saver.table.name)  # the value went to chunk items
        async with open_saver(serde=make_serializer(AES_KEY), table=saver.table.name) as fresh:
            state = await offline_agent(fresh).aget_state(config)
        assert human_texts(state) == ["hello", big, "after"]
        await saver.aprune([config["configurable"]["thread_id"]], strategy="keep_latest")
        state = await graph.aget_state(config)
        assert human_texts(state) == ["hello", big, "after"]
        assert orphan_chunks(raw_items(ddb, saver.table.name)) == []
        await saver.adelete_thread(config["configurable"]["thread_id"])
        assert raw_items(ddb, saver.table.name) == []


async def test_with_aes_nothing_stored_holds_a_value_in_clear(open_saver: Opener, ddb: Any) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    config = thread_config("canary")
    config["metadata"] = {"note": canary}
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, [f"my secret is {canary}", "and again " + canary])
        await graph.aupdate_state(config, {"messages": [HumanMessage(canary * 40_000)]})
        items = raw_items(ddb, saver.table.name)
        assert {"c", "b", "w", "k"} <= {i["kind"]["S"] for i in items}
        dumped = repr(items).encode()
        assert canary.encode() not in dumped
        assert canary.encode() not in b"".join(
            bytes(v["B"]) for i in items for v in i.values() if "B" in v
        )
        assert human_texts(await graph.aget_state(config))[-1] == canary * 40_000


async def test_aes_values_copied_elsewhere_are_refused_and_copy_thread_rebinds(
    open_saver: Opener, ddb: Any
) -> None:
    config = thread_config("src")
    source = config["configurable"]["thread_id"]
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, ["one", "two"])
        target = f"{source}-copy"
        await saver.acopy_thread(source, target)
        copied = {"configurable": {"thread_id": target}}
        assert human_texts(await graph.aget_state(copied)) == ["one", "two"]
        await take_turns(graph, copied, ["three"])
        assert human_texts(await graph.aget_state(copied)) == ["one", "two", "three"]
        assert human_texts(await graph.aget_state(config)) == ["one", "two"]
        # A raw copy of a ciphertext onto another thread does not decrypt there.
        stolen = f"{source}-stolen"
        for item in raw_items(ddb, saver.table.name):
            if item["pk"]["S"] == f"t#{source}" and item["kind"]["S"] in ("c", "b", "w"):
                ddb.put_item(TableName=saver.table.name, Item={**item, "pk": {"S": f"t#{stolen}"}})
        with pytest.raises(MisplacedValueError):
            await saver.aget_tuple({"configurable": {"thread_id": stolen}})


async def test_receipts_and_records_round_trip(open_saver: Opener, ddb: Any) -> None:
    async with open_saver() as saver:
        first = thread_record("acme/t1", at=100.0)
        far = 4_000_000_000.0
        c1 = await stored_turn(
            saver, "acme/t1", {**record_metadata(first), **receipts_metadata({"n1": "d1"}, far)}
        )
        receipt = await saver.aget_receipt("acme/t1", "n1")
        assert receipt is not None and (receipt.digest, receipt.checkpoint_id) == ("d1", c1)
        assert await saver.aget_receipt("acme/t1", "unknown") is None
        assert await saver.aget_thread_record("acme/t1") == first
        # A later turn moves updated_at and the count; owner, title and creation stay; an
        # existing live receipt keeps naming the first checkpoint.
        later = thread_record("acme/t1", user="someone-else", at=200.0)
        later = ThreadRecord(**{**later.__dict__, "title": "other", "message_count": 4})
        c2 = await stored_turn(
            saver,
            "acme/t1",
            {**record_metadata(later), **receipts_metadata({"n1": "dX", "n2": "d2"}, far)},
        )
        record = await saver.aget_thread_record("acme/t1")
        assert record is not None
        assert (record.title, record.user_id, record.created_at) == (first.title, "ada", 100.0)
        assert (record.updated_at, record.message_count) == (200.0, 4)
        assert [await receipt_of(saver, "acme/t1", n) for n in ("n1", "n2")] == [c1, c2]
        expired = await stored_turn(saver, "acme/t1", receipts_metadata({"old": "d"}, 1.0))
        assert expired and await saver.aget_receipt("acme/t1", "old") is None

        # Listings: a tenant's records newest first, by user, in pages; other tenants apart.
        await stored_turn(saver, "acme/t2", record_metadata(thread_record("acme/t2", at=150.0)))
        await stored_turn(
            saver, "acme/t3", record_metadata(thread_record("acme/t3", user="bob", at=300.0))
        )
        await stored_turn(
            saver, "beta/t1", record_metadata(thread_record("beta/t1", tenant="beta", at=400.0))
        )
        keys = [r.thread_key for r in await saver.alist_thread_records(RecordQuery("acme"))]
        assert keys == ["acme/t3", "acme/t1", "acme/t2"]
        ada = await saver.alist_thread_records(RecordQuery("acme", user_id="ada", limit=1))
        assert [r.thread_key for r in ada] == ["acme/t1"]
        rest = await saver.alist_thread_records(
            RecordQuery("acme", user_id="ada", after=ada[0].position)
        )
        assert [r.thread_key for r in rest] == ["acme/t2"]

        # Conditional updates, on the canonical record and its listing copy alike.
        assert (
            await saver.aupdate_thread_record(
                "acme/t2", {"status": ARCHIVED}, expect={"status": "x"}
            )
            is None
        )
        assert await saver.aupdate_thread_record("missing", {"hold": True}) is None
        held = await saver.aupdate_thread_record(
            "acme/t2", {"hold": True, "ttl_seconds": 5.0}, expect={"status": LIVE, "swept_at": None}
        )
        assert held is not None and held.hold and held.ttl_seconds == 5.0
        # The condition is DynamoDB's, not only a check before writing: a record changed
        # since it was read is left alone.
        stale = update_actions(saver.table.name, held, {"title": "x"}, {"hold": False})
        with pytest.raises(StoreError):
            await asyncio.to_thread(saver.table.transact, stale)
        assert await saver.aget_thread_record("acme/t2") == held
        listed = {r.thread_key: r for r in await saver.alist_thread_records(RecordQuery("acme"))}
        assert listed["acme/t2"] == held

        # Expiry: idle past the TTL, not held, not swept since.
        due = await saver.alist_expired_records(now=1000.0, default_ttl=10.0, limit=10)
        assert [r.thread_key for r in due] == ["acme/t1", "acme/t3", "beta/t1"]
        await saver.aupdate_thread_record("acme/t1", {"swept_at": 200.0})
        due = await saver.alist_expired_records(now=1000.0, default_ttl=10.0, limit=1)
        assert [r.thread_key for r in due] == ["acme/t3"]

        # Cutting to one checkpoint keeps it and the record, drops receipts.
        await saver.adelete_checkpoints("acme/t1", keep=c2)
        kept = [t async for t in saver.alist({"configurable": {"thread_id": "acme/t1"}})]
        assert [t.checkpoint["id"] for t in kept] == [c2] and kept[0].parent_config is None
        assert await saver.aget_receipt("acme/t1", "n2") is None
        assert await saver.aget_thread_record("acme/t1") is not None

        # Deleting the thread takes everything of it, its listing entry too.
        await saver.adelete_thread("acme/t1")
        assert await saver.aget_thread_record("acme/t1") is None
        assert "acme/t1" not in [
            r.thread_key for r in await saver.alist_thread_records(RecordQuery("acme"))
        ]
        assert not [i for i in raw_items(ddb, saver.table.name) if "acme/t1" in repr(i)]


@pytest.mark.parametrize("size_mb", [0, 5], ids=["one-transaction", "chunks-first"])
async def test_a_put_is_stored_whole_or_not_at_all(
    size_mb: int, open_saver: Opener, ddb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = thread_config("atomic")
    thread = config["configurable"]["thread_id"]
    async with open_saver() as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, ["kept"])
        before = {(i["pk"]["S"], i["sk"]["S"]) for i in raw_items(ddb, saver.table.name)}
        table = saver.table
        transact = table.transact

        def failing(actions: list[Action]) -> None:
            # The transaction also checks a condition that fails: nothing of it may land.
            check = {
                "ConditionCheck": {
                    "TableName": table.name,
                    "Key": {"pk": {"S": "nowhere"}, "sk": {"S": "nothing"}},
                    "ConditionExpression": "attribute_exists(pk)",
                }
            }
            transact([*actions, Action(check)])

        monkeypatch.setattr(table, "transact", failing)
        with pytest.raises(StoreError):
            await take_turns(graph, config, ["lost " + "y" * (size_mb * MB)])
        monkeypatch.setattr(table, "transact", transact)
        after = raw_items(ddb, saver.table.name)
        new = [i for i in after if (i["pk"]["S"], i["sk"]["S"]) not in before]
        # Only what a too-large transaction writes ahead (chunks, new channel values) may
        # remain, referenced by nothing.
        assert {i["kind"]["S"] for i in new} <= ({"k", "b"} if size_mb else set())
        assert "k" in {i["kind"]["S"] for i in new} or not size_mb
        assert human_texts(await graph.aget_state(config)) == ["kept"]
        await take_turns(graph, config, ["next"])
        assert human_texts(await graph.aget_state(config)) == ["kept", "next"]
        await saver.adelete_thread(thread)
        assert raw_items(ddb, saver.table.name) == []


async def test_a_served_turn_is_stored_whole_or_not_at_all(
    open_saver: Opener, ddb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stores a turn's new messages (writes on the previous checkpoint) and its
    checkpoint together: DynamoDB refusing the checkpoint leaves no write of the turn."""
    from langchain_core.messages import HumanMessage

    from threadline.server.turns import TurnRunner

    config = thread_config("served")
    async with open_saver() as saver:
        runner = TurnRunner(offline_agent(saver))
        await runner.invoke({"messages": [HumanMessage("kept")]}, config)
        before = {(i["pk"]["S"], i["sk"]["S"]) for i in raw_items(ddb, saver.table.name)}
        table = saver.table
        transact = table.transact

        def refusing_checkpoints(actions: list[Action]) -> None:
            # The checkpoint's transaction also checks a condition that fails.
            puts = [a.body["Put"]["Item"] for a in actions if "Put" in a.body]
            if "c" in {item["kind"]["S"] for item in puts if "kind" in item}:
                check = {
                    "ConditionCheck": {
                        "TableName": table.name,
                        "Key": {"pk": {"S": "nowhere"}, "sk": {"S": "nothing"}},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                }
                actions = [*actions, Action(check)]
            transact(actions)

        monkeypatch.setattr(table, "transact", refusing_checkpoints)
        with pytest.raises(StoreError):
            await runner.invoke({"messages": [HumanMessage("lost")]}, config)
        monkeypatch.setattr(table, "transact", transact)
        after = raw_items(ddb, saver.table.name)
        new = [i["kind"]["S"] for i in after if (i["pk"]["S"], i["sk"]["S"]) not in before]
        assert new == [], f"the refused turn left {new}"
        await runner.invoke({"messages": [HumanMessage("next")]}, config)
        assert human_texts(await offline_agent(saver).aget_state(config)) == ["kept", "next"]


async def test_keep_latest_keeps_a_delta_transcript_whole(open_saver: Opener, ddb: Any) -> None:
    config = thread_config("prune")
    thread = config["configurable"]["thread_id"]
    turns = [f"turn {i}" for i in range(15)]
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, turns)
        await saver.aprune([thread], strategy="keep_latest")
        assert len([t async for t in saver.alist(config)]) == 1
        assert human_texts(await graph.aget_state(config)) == turns
        await take_turns(graph, config, ["one more"])
        assert human_texts(await graph.aget_state(config)) == [*turns, "one more"]
        # A second prune of a thread that was pruned before still keeps it whole.
        await saver.aprune([thread], strategy="keep_latest")
        assert human_texts(await graph.aget_state(config)) == [*turns, "one more"]
        assert "c" in kinds(ddb, saver.table.name)
        await saver.aprune([thread], strategy="delete")
        assert [t async for t in saver.alist(config)] == []


async def test_the_sync_api_works_from_a_worker_thread(open_saver: Opener) -> None:
    config = thread_config("sync")
    async with open_saver() as saver:
        await take_turns(offline_agent(saver), config, ["one"])

        def read() -> list[str]:
            graph = offline_agent(saver)
            return human_texts(graph.get_state(config))

        assert await asyncio.to_thread(read) == ["one"]


async def test_delta_histories_match_the_walk_langgraph_defines(open_saver: Opener) -> None:
    """At every checkpoint of a thread with a branch, the saver's history equals the base
    class's parent-chain walk (read whole, checkpoint by checkpoint), whether this process
    has histories cached (it took the turns) or not (a fresh saver)."""
    config = thread_config("walk")
    serde = make_serializer(AES_KEY)
    async with open_saver(serde=serde) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, [f"turn {i}" for i in range(14)])
        history = [s async for s in graph.aget_state_history(config)]
        await take_turns(graph, history[len(history) // 2].config, ["a branch"])
        async with open_saver(serde=serde, table=saver.table.name) as cold:
            checked = 0
            async for tup in saver.alist(config):
                walk = BaseCheckpointSaver.aget_delta_channel_history
                expected = await walk(saver, config=tup.config, channels=["messages"])
                for reader in (saver, cold, cold):
                    found = await reader.aget_delta_channel_history(
                        config=tup.config, channels=["messages"]
                    )
                    assert found == expected
                checked += 1
        assert checked > 40


async def test_from_settings_uses_boto3_sources_and_setup_is_idempotent(
    dynamodb_endpoint: str, ddb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DYNAMODB_LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    table = f"t_{uuid.uuid4().hex[:12]}"
    try:
        async with DynamoDBSaver.from_settings(table, endpoint_url=dynamodb_endpoint) as saver:
            await saver.setup()  # a second time: the table is there
            config = thread_config("settings")
            await take_turns(offline_agent(saver), config, ["hi"])
        async with DynamoDBSaver.from_settings(table, endpoint_url=dynamodb_endpoint) as saver:
            assert human_texts(await offline_agent(saver).aget_state(config)) == ["hi"]
        ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] in ("ENABLED", "ENABLING")
    finally:
        ddb.delete_table(TableName=table)


async def test_retention_keeps_latest_archives_restores_and_expires_a_thread(
    open_saver: Opener, ddb: Any, tmp_path: Path
) -> None:
    """What the sweeper does to a thread, through `ThreadKeeper` on this saver: every step
    leaves the transcript whole, and expiry leaves nothing."""
    config = thread_config("kept")
    thread = config["configurable"]["thread_id"]
    turns = [f"turn {i}" for i in range(6)]
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, turns)
        # The offline agent writes no record (the server adds it to a turn's metadata).
        for action in upsert_actions(saver.table.name, thread_record(thread)):
            ddb.update_item(**action.body["Update"])
        keeper = ThreadKeeper(graph, open_archive(f"file://{tmp_path}"), AuditLog(tmp_path / "a"))
        record = await saver.aget_thread_record(thread)
        assert record is not None

        assert await keeper.keep_latest(record)
        assert len([t async for t in saver.alist(config)]) == 1
        assert human_texts(await graph.aget_state(config)) == turns

        record = await saver.aget_thread_record(thread)
        assert record is not None and await keeper.archive_thread(record)
        assert [t async for t in saver.alist(config)] == []
        restored = await keeper.restore(thread)
        assert restored.status == LIVE
        assert human_texts(await graph.aget_state(config)) == turns
        await take_turns(graph, config, ["back"])
        assert human_texts(await graph.aget_state(config)) == [*turns, "back"]

        assert await keeper.expire(restored)
        assert raw_items(ddb, saver.table.name) == []


async def test_an_unreachable_dynamodb_is_a_store_outage() -> None:
    """What the server answers as 503 (see `server.outages`), like an unreachable Postgres."""
    client = dynamodb_client(
        f"http://127.0.0.1:{free_port()}", retries={"max_attempts": 1}, connect_timeout=1
    )
    saver = DynamoDBSaver(client, "nowhere")
    try:
        with pytest.raises(CheckpointStoreUnavailable):
            await saver.aget_tuple(thread_config("down"))
    finally:
        saver.close()


def test_replicas_setting_up_one_table_together_all_start(dynamodb_endpoint: str) -> None:
    """Servers starting at once each create the table and enable its TTL: whoever loses a
    race finds the work done, never an error."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(3):
        name = f"race-{uuid.uuid4().hex[:8]}"
        tables = [Table(dynamodb_client(dynamodb_endpoint), name) for _ in range(4)]
        with ThreadPoolExecutor(len(tables)) as pool:
            list(pool.map(lambda table: table.create(), tables))
