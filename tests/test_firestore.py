"""`FirestoreSaver` against the Firestore emulator: the conformance suite with and without
AES, a thread continued by a fresh saver, a message over Firestore's 1 MiB document limit,
ciphertext at rest, receipts and records, pruning of delta-stored transcripts, and
all-or-nothing puts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import NotFound
from google.cloud.firestore import AsyncClient
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint

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
from threadline.checkpointers.firestore import FirestoreSaver
from threadline.checkpointers.firestore.layout import (
    OWNER_TAGS,
    chunk_refs,
    doc_size,
    thread_doc_id,
)
from threadline.checkpointers.firestore.thread_records import record_doc
from threadline.checkpointers.receipts import receipts_metadata
from threadline.checkpointers.records import (
    ARCHIVED,
    LIVE,
    RecordQuery,
    ThreadRecord,
    record_metadata,
)
from threadline.checkpointers.serde import MisplacedValueError, make_serializer
from threadline.retention import ThreadKeeper
from threadline.retention.archive import open_archive

AES_KEY = "conformance-key-0123456789abcdef"[:32]
MB = 1024 * 1024
PROJECT = "demo-threadline"
Opener = Callable[..., Any]


@pytest.fixture
def firestore_env(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    return firestore_host


@pytest.fixture
def open_saver(firestore_env: str) -> Iterator[Opener]:
    """`open_saver(serde=None, prefix=None)`: a saver on a fresh collection prefix (or on
    `prefix`), with a client of its own."""

    @asynccontextmanager
    async def factory(
        serde: Any = None, prefix: str | None = None
    ) -> AsyncIterator[FirestoreSaver]:
        saver = FirestoreSaver(PROJECT, prefix or f"t{uuid.uuid4().hex[:12]}", serde=serde)
        await saver.setup()
        try:
            yield saver
        finally:
            await saver.aclose()

    yield factory


async def raw_docs(saver: FirestoreSaver) -> list[tuple[str, dict[str, Any]]]:
    """(path, data) of every document under the saver's prefix, straight from Firestore."""
    found: list[tuple[str, dict[str, Any]]] = []
    client = AsyncClient(project=PROJECT)
    try:
        prefix = saver.store.prefix
        async for thread in client.collection(f"{prefix}_threads").list_documents():
            snap = await thread.get()
            if snap.exists:
                found.append((thread.path, snap.to_dict() or {}))
            async for sub in thread.collections():
                async for doc in sub.stream():
                    found.append((doc.reference.path, doc.to_dict() or {}))
    finally:
        client.close()
    return found


def orphan_chunks(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Chunk documents that no owner document refers to."""
    referenced = {
        chunk_id
        for path, doc in docs
        if path.count("/") == 3 and (kind := path.split("/")[2].rsplit("_", 1)[-1]) in OWNER_TAGS
        for ids in chunk_refs(kind, path.split("/")[3], doc).values()
        for chunk_id in ids
    }
    return [
        path
        for path, _ in docs
        if path.split("/")[2].endswith("_chunks") and path.split("/")[3] not in referenced
    ]


def kinds(docs: list[tuple[str, dict[str, Any]]]) -> set[str]:
    return {path.split("/")[-2].rsplit("_", 1)[-1] for path, _ in docs if path.count("/") > 1}


def fs_record(*args: Any, **kwargs: Any) -> ThreadRecord:
    """A test record whose metadata has a dotted key and a list (Firestore field paths)."""
    return thread_record(*args, metadata={"k": "v", "a.b": [1]}, **kwargs)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
async def test_conformance_is_full(encrypted: bool, open_saver: Opener) -> None:
    serde = make_serializer(AES_KEY if encrypted else None)
    name = f"FirestoreSaver{' (AES)' if encrypted else ''}"
    await assert_fully_conformant(name, lambda: open_saver(serde=serde))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
async def test_a_fresh_saver_continues_a_three_turn_thread(
    encrypted: bool, open_saver: Opener
) -> None:
    config = thread_config("fs")
    async with open_saver(serde=make_serializer(AES_KEY if encrypted else None)) as saver:
        await take_turns(offline_agent(saver), config, ["one", "two", "three"])
        prefix = saver.store.prefix
    # A new client and saver, as after a restart.
    async with open_saver(
        serde=make_serializer(AES_KEY if encrypted else None), prefix=prefix
    ) as fresh:
        graph = offline_agent(fresh)
        assert human_texts(await graph.aget_state(config)) == ["one", "two", "three"]
        await take_turns(graph, config, ["four"])
        assert human_texts(await graph.aget_state(config)) == ["one", "two", "three", "four"]
        history = [s async for s in graph.aget_state_history(config)]
        assert len(history) >= 4


async def test_a_one_megabyte_message_does_not_break_the_thread(open_saver: Opener) -> None:
    big = "x" * MB
    config = thread_config("big")
    thread = config["configurable"]["thread_id"]
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, ["hello", big, "after"])
        docs = await raw_docs(saver)
        assert "chunks" in kinds(docs)  # the value went to chunk documents
        assert max(doc_size(d) for _, d in docs) < 1_000_000  # each under Firestore's 1 MiB
        async with open_saver(serde=make_serializer(AES_KEY), prefix=saver.store.prefix) as fresh:
            state = await offline_agent(fresh).aget_state(config)
        assert human_texts(state) == ["hello", big, "after"]
        assert orphan_chunks(await raw_docs(saver)) == []
        await saver.aprune([thread], strategy="keep_latest")
        assert human_texts(await graph.aget_state(config)) == ["hello", big, "after"]
        assert orphan_chunks(await raw_docs(saver)) == []
        await take_turns(graph, config, ["more"])
        assert human_texts(await graph.aget_state(config)) == ["hello", big, "after", "more"]
        await saver.adelete_thread(thread)
        assert await raw_docs(saver) == []


@pytest.mark.parametrize("size_mb", [1, 12], ids=["1MB-one-commit", "12MB-chunks-first"])
async def test_a_put_too_large_for_one_commit_writes_its_chunks_first(
    size_mb: int, open_saver: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = thread_config("huge")
    huge = "y" * (size_mb * MB)
    async with open_saver() as saver:
        graph = offline_agent(saver)
        commit = saver.store.commit
        ahead: list[set[str]] = []

        async def spied(early: Any, final: Any, decide: Any = None) -> None:
            ahead.append({ref.parent.id.rsplit("_", 1)[-1] for ref, _ in early})
            # Whatever goes ahead is what nothing refers to yet; the checkpoint goes last.
            assert ahead[-1] <= {"chunks", "blobs"}
            await commit(early, final, decide)

        monkeypatch.setattr(saver.store, "commit", spied)
        await take_turns(graph, config, ["hello", huge])
        # 1 MB fits one commit with its chunks; 12 MB has its chunks written first.
        assert any(ahead) == (size_mb > 3)
        assert human_texts(await graph.aget_state(config)) == ["hello", huge]
        async with open_saver(prefix=saver.store.prefix) as fresh:
            assert human_texts(await offline_agent(fresh).aget_state(config)) == ["hello", huge]


async def test_with_aes_nothing_stored_holds_a_value_in_clear(open_saver: Opener) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    config = thread_config("canary")
    config["metadata"] = {"note": canary}
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, [f"my secret is {canary}", "and again " + canary])
        await graph.aupdate_state(config, {"messages": [HumanMessage(canary * 40_000)]})
        docs = await raw_docs(saver)
        assert {"checkpoints", "blobs", "writes", "chunks"} <= kinds(docs)
        dumped = repr(docs).encode()
        assert canary.encode() not in dumped
        assert canary.encode() not in b"".join(
            v for _, d in docs for v in d.values() if isinstance(v, bytes)
        )
        assert human_texts(await graph.aget_state(config))[-1] == canary * 40_000
        # Metadata filters still work: they are checked after decryption.
        found = [t async for t in saver.alist(config, filter={"note": canary})]
        assert found and all(t.metadata["note"] == canary for t in found)
        assert [t async for t in saver.alist(config, filter={"note": "other"})] == []


async def test_aes_values_copied_elsewhere_are_refused_and_copy_thread_rebinds(
    open_saver: Opener,
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
        # A raw copy of the documents onto another thread does not decrypt there.
        stolen = f"{source}-stolen"
        client = saver.client
        for path, doc in await raw_docs(saver):
            parts = path.split("/")
            if len(parts) == 4 and parts[1] == f"t!{source}":
                parts[1] = f"t!{stolen}"
                if "thread" in doc:
                    doc = {**doc, "thread": stolen}
                await client.document(*parts).set(doc)
        with pytest.raises(MisplacedValueError):
            await saver.aget_tuple({"configurable": {"thread_id": stolen}})


async def test_receipts_and_records_round_trip(open_saver: Opener) -> None:
    async with open_saver() as saver:
        first = fs_record("acme/t1", at=100.0)
        far = 4_000_000_000.0
        c1 = await stored_turn(
            saver, "acme/t1", {**record_metadata(first), **receipts_metadata({"n1": "d1"}, far)}
        )
        assert saver.take_written_record("acme/t1") == first
        receipt = await saver.aget_receipt("acme/t1", "n1")
        assert receipt is not None and (receipt.digest, receipt.checkpoint_id) == ("d1", c1)
        assert await saver.aget_receipt("acme/t1", "unknown") is None
        assert await saver.aget_thread_record("acme/t1") == first
        # A later turn moves updated_at and the count; owner, title and creation stay; an
        # existing live receipt keeps naming the first checkpoint.
        later = ThreadRecord(
            **{
                **fs_record("acme/t1", user="x", at=200.0).__dict__,
                "title": "o",
                "message_count": 4,
            }
        )
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
        await stored_turn(saver, "acme/t1", receipts_metadata({"old": "d"}, 1.0))
        assert await saver.aget_receipt("acme/t1", "old") is None

        # Listings: a tenant's records newest first, by user, in pages; other tenants apart.
        await stored_turn(saver, "acme/t2", record_metadata(fs_record("acme/t2", at=150.0)))
        await stored_turn(
            saver, "acme/t3", record_metadata(fs_record("acme/t3", user="bob", at=300.0))
        )
        await stored_turn(
            saver, "beta/t1", record_metadata(fs_record("beta/t1", tenant="beta", at=400.0))
        )
        keys = [r.thread_key for r in await saver.alist_thread_records(RecordQuery("acme"))]
        assert keys == ["acme/t3", "acme/t1", "acme/t2"]
        ada = await saver.alist_thread_records(RecordQuery("acme", user_id="ada", limit=1))
        assert [r.thread_key for r in ada] == ["acme/t1"]
        rest = await saver.alist_thread_records(
            RecordQuery("acme", user_id="ada", after=ada[0].position)
        )
        assert [r.thread_key for r in rest] == ["acme/t2"]

        # Conditional updates.
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
        assert await saver.aget_thread_record("acme/t2") == held
        with pytest.raises(ValueError):
            await saver.aupdate_thread_record("acme/t2", {"tenant": "other"})

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

        # Deleting the thread takes everything of it, its record too.
        await saver.adelete_thread("acme/t1")
        assert await saver.aget_thread_record("acme/t1") is None
        listed = await saver.alist_thread_records(RecordQuery("acme"))
        assert "acme/t1" not in [r.thread_key for r in listed]
        assert not [p for p, _ in await raw_docs(saver) if "acme%2Ft1" in p]


async def test_a_put_is_stored_whole_or_not_at_all(
    open_saver: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put whose commit fails leaves nothing of it: no checkpoint, no value, no record."""
    config = thread_config("atomic")
    thread = config["configurable"]["thread_id"]
    async with open_saver() as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, ["kept"])
        before = {p for p, _ in await raw_docs(saver)}
        from google.cloud.firestore_v1.async_batch import AsyncWriteBatch

        real_commit = AsyncWriteBatch.commit

        async def failing(self: AsyncWriteBatch, *args: Any, **kwargs: Any) -> Any:
            # Add a write Firestore refuses (an update of a missing document): the whole
            # commit fails, every other write of it with it.
            self.update(saver.client.document("nowhere/nothing"), {"x": 1})
            return await real_commit(self, *args, **kwargs)

        monkeypatch.setattr(AsyncWriteBatch, "commit", failing)
        with pytest.raises(NotFound):
            await take_turns(graph, config, ["lost"])
        monkeypatch.setattr(AsyncWriteBatch, "commit", real_commit)
        # The turn's task writes were stored before its checkpoint (as LangGraph does);
        # nothing of the failed put was: no checkpoint, channel value or chunk.
        new = {p for p, _ in await raw_docs(saver)} - before
        assert {p.split("/")[-2].rsplit("_", 1)[-1] for p in new} <= {"writes"}
        assert human_texts(await graph.aget_state(config)) == ["kept"]
        await take_turns(graph, config, ["next"])
        assert human_texts(await graph.aget_state(config)) == ["kept", "next"]
        # The same with the record and receipts: the transaction's commit fails whole.
        latest = await saver.aget_tuple(config)
        assert latest is not None
        record = fs_record(thread)
        real_set = AsyncWriteBatch.set

        def set_then_break(self: AsyncWriteBatch, ref: Any, data: Any, *a: Any, **k: Any) -> Any:
            if data.get("rec"):
                self.update(saver.client.document("nowhere/nothing"), {"x": 1})
            return real_set(self, ref, data, *a, **k)

        monkeypatch.setattr(AsyncWriteBatch, "set", set_then_break)
        with pytest.raises(NotFound):
            await stored_turn(
                saver, thread, {**record_metadata(record), **receipts_metadata({"n": "d"}, 4e9)}
            )
        monkeypatch.setattr(AsyncWriteBatch, "set", real_set)
        assert await saver.aget_thread_record(thread) is None
        assert await saver.aget_receipt(thread, "n") is None
        assert (await saver.aget_tuple(config)).checkpoint["id"] == latest.checkpoint["id"]  # type: ignore[union-attr]


async def test_a_served_turn_is_stored_whole_or_not_at_all(
    open_saver: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stores a turn's new messages (writes on the previous checkpoint) and its
    checkpoint together: Firestore refusing the checkpoint leaves no write of the turn."""
    from google.cloud.firestore_v1.async_batch import AsyncWriteBatch
    from langchain_core.messages import HumanMessage

    from threadline.server.turns import TurnRunner

    config = thread_config("served")
    async with open_saver() as saver:
        runner = TurnRunner(offline_agent(saver))
        await runner.invoke({"messages": [HumanMessage("kept")]}, config)
        before = {p for p, _ in await raw_docs(saver)}
        real_set = AsyncWriteBatch.set

        def refusing_checkpoints(
            self: AsyncWriteBatch, ref: Any, data: Any, *a: Any, **k: Any
        ) -> Any:
            if ref.path.split("/")[-2].endswith("checkpoints"):  # the commit fails whole
                self.update(saver.client.document("nowhere/nothing"), {"x": 1})
            return real_set(self, ref, data, *a, **k)

        monkeypatch.setattr(AsyncWriteBatch, "set", refusing_checkpoints)
        with pytest.raises(NotFound):
            await runner.invoke({"messages": [HumanMessage("lost")]}, config)
        monkeypatch.setattr(AsyncWriteBatch, "set", real_set)
        new = {p for p, _ in await raw_docs(saver)} - before
        assert new == set(), f"the refused turn left {sorted(new)}"
        await runner.invoke({"messages": [HumanMessage("next")]}, config)
        assert human_texts(await offline_agent(saver).aget_state(config)) == ["kept", "next"]


async def test_keep_latest_keeps_a_delta_transcript_whole(open_saver: Opener) -> None:
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
        await saver.aprune([thread], strategy="keep_latest")
        assert human_texts(await graph.aget_state(config)) == [*turns, "one more"]
        await saver.aprune([thread], strategy="delete")
        assert [t async for t in saver.alist(config)] == []


async def test_delta_histories_match_the_walk_langgraph_defines(open_saver: Opener) -> None:
    """At every checkpoint of a thread with a branch, the saver's history equals the base
    class's parent-chain walk (read whole, checkpoint by checkpoint)."""
    config = thread_config("walk")
    async with open_saver(serde=make_serializer(AES_KEY)) as saver:
        graph = offline_agent(saver)
        await take_turns(graph, config, [f"turn {i}" for i in range(8)])
        history = [s async for s in graph.aget_state_history(config)]
        await take_turns(graph, history[len(history) // 2].config, ["a branch"])
        checked = 0
        async for tup in saver.alist(config):
            walk = BaseCheckpointSaver.aget_delta_channel_history
            expected = await walk(saver, config=tup.config, channels=["messages"])
            found = await saver.aget_delta_channel_history(config=tup.config, channels=["messages"])
            assert found == expected
            checked += 1
        assert checked > 20


async def test_the_sync_api_works_from_a_worker_thread(open_saver: Opener) -> None:
    config = thread_config("sync")
    async with open_saver() as saver:
        await take_turns(offline_agent(saver), config, ["one"])

        def read() -> list[str]:
            return human_texts(offline_agent(saver).get_state(config))

        assert await asyncio.to_thread(read) == ["one"]


async def test_retention_keeps_latest_archives_restores_and_expires_a_thread(
    open_saver: Opener, tmp_path: Path
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
        await saver.store.thread(thread_doc_id(thread)).set(record_doc(fs_record(thread)))
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
        assert await raw_docs(saver) == []


async def test_names_that_look_alike_never_share_a_document(open_saver: Opener) -> None:
    """Thread keys, namespaces and ids that a naive `{thread}_{ns}` join would confuse each
    get their own documents and listings."""
    async with open_saver() as saver:
        places = [("x/y", ""), ("x%2Fy", ""), ("x", "y"), ("x!y", ""), ("x", "!"), ("x", "")]
        stored = {}
        for thread, ns in places:
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"who": f"{thread}|{ns}"}
            versions = {"who": saver.get_next_version(None, None)}
            checkpoint["channel_versions"] = versions
            await saver.aput(config, checkpoint, {"source": "input", "step": -1}, versions)
            stored[(thread, ns)] = checkpoint["id"]
        for (thread, ns), cid in stored.items():
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
            tup = await saver.aget_tuple(config)
            assert tup is not None and tup.checkpoint["id"] == cid
            assert tup.checkpoint["channel_values"]["who"] == f"{thread}|{ns}"
            assert [t.checkpoint["id"] async for t in saver.alist(config)] == [cid]
        everything = [t async for t in saver.alist({"configurable": {"thread_id": "x"}})]
        assert sorted(t.config["configurable"]["checkpoint_ns"] for t in everything) == [
            "",
            "!",
            "y",
        ]
        await saver.adelete_thread("x")
        assert await saver.aget_tuple({"configurable": {"thread_id": "x!y"}}) is not None


async def test_from_settings_reads_the_emulator_from_the_environment(firestore_env: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = thread_config("settings")
    async with FirestoreSaver.from_settings(PROJECT, prefix) as saver:
        await take_turns(offline_agent(saver), config, ["hi"])
    async with FirestoreSaver.from_settings(PROJECT, prefix) as saver:
        assert human_texts(await offline_agent(saver).aget_state(config)) == ["hi"]
        assert (await raw_docs(saver))[0][0].startswith(f"{prefix}_threads/")
