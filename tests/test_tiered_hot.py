"""The hot tier on real Redis: module-free, one round trip, one slot, idle TTL, ordering."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from redis.asyncio.connection import AbstractConnection
from redis.cluster import key_slot

from tests.fixtures.checkpointers import (
    echo_graph,
    erase_thread_rows,
    human_texts,
    offline_agent,
    take_turns,
    thread_config,
)
from threadline.checkpointers import open_checkpointer
from threadline.checkpointers.durable import DurablePostgresSaver
from threadline.checkpointers.tiered import COMMIT_DELAY_SECONDS, TieredSaver
from threadline.settings import Settings


def raw_keys(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


@contextlib.contextmanager
def redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts what every Redis connection of this process sends meanwhile (a pipeline is one
    send): `[n]` once the block ends."""
    sends = [0]
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sends[0] += 1
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    try:
        yield sends
    finally:
        monkeypatch.undo()


async def test_hot_tier_serves_reads_from_redis_without_modules(
    open_tiered, plain_redis_url, postgres_db_url, monkeypatch
):
    client = redis.Redis.from_url(plain_redis_url)
    assert client.execute_command("MODULE LIST") == []  # no RedisJSON, no RediSearch
    client.close()
    async with open_tiered() as saver:
        graph = echo_graph(saver)
        config = thread_config("plain")
        await take_turns(graph, config, ["one", "two", "three"])

        erase_thread_rows(postgres_db_url, config["configurable"]["thread_id"])
        with redis_round_trips(monkeypatch) as sends:
            hit = await saver.aget_tuple(config)
        assert hit is not None  # Postgres has nothing left: Redis answered
        assert [m.content for m in hit.checkpoint["channel_values"]["messages"]][::2] == [
            "one",
            "two",
            "three",
        ]
        assert sends == [1], f"a hot read took {sends[0]} round trips"


async def test_thread_keys_share_one_cluster_slot(open_tiered, plain_redis_url):
    client = redis.Redis.from_url(plain_redis_url)
    async with open_tiered() as saver:
        for thread_id in (f"slot-{uuid.uuid4().hex}", "odd{brace}id", "}{"):
            for ns in ("", "child:1"):
                config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
                await saver.aput(config, empty_checkpoint(), {"step": 0}, {})
            keys = {*saver.hot.keys(thread_id, ""), *saver.hot.keys(thread_id, "child:1")}
            assert len(keys) == 3 and client.exists(*keys) == 3
            assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    client.close()


async def test_idle_thread_expires_whole_and_reads_back_from_postgres(open_tiered, plain_redis_url):
    async with open_tiered(key_prefix="ttl", hot_ttl_seconds=0.6) as saver:
        graph = echo_graph(saver)
        config = thread_config("ttl")
        await take_turns(graph, config, ["one", "two"])
        assert raw_keys(plain_redis_url, "ttl")
        for _ in range(4):  # reads keep an active thread's entry alive
            await asyncio.sleep(0.25)
            await graph.aget_state(config)
        assert raw_keys(plain_redis_url, "ttl")
        deadline = time.monotonic() + 5
        while raw_keys(plain_redis_url, "ttl"):
            assert time.monotonic() < deadline, "the idle entry never expired"
            await asyncio.sleep(0.1)
        assert human_texts(await graph.aget_state(config)) == ["one", "two"]
        assert raw_keys(plain_redis_url, "ttl")  # warmed again by that read


async def test_destructive_operations_reach_the_hot_tier(open_tiered):
    async with open_tiered() as saver:
        graph = echo_graph(saver)
        source, target = thread_config("src"), thread_config("dst")
        await take_turns(graph, source, ["one"])
        await graph.ainvoke(
            {"messages": [("user", "two")]},
            {**source, "metadata": {"run_id": "doomed-run"}},
        )
        assert human_texts(await graph.aget_state(source)) == ["one", "two"]  # hot

        await saver.adelete_for_runs(["doomed-run"])
        assert human_texts(await graph.aget_state(source)) == ["one"]

        await saver.acopy_thread(
            source["configurable"]["thread_id"], target["configurable"]["thread_id"]
        )
        assert human_texts(await graph.aget_state(target)) == ["one"]

        await saver.aprune([source["configurable"]["thread_id"]], strategy="keep_latest")
        assert human_texts(await graph.aget_state(source)) == ["one"]
        assert len([c async for c in saver.alist(source)]) == 1

        await saver.adelete_thread(source["configurable"]["thread_id"])
        assert await saver.aget_tuple(source) is None
        assert human_texts(await graph.aget_state(target)) == ["one"]


async def test_late_writes_never_roll_an_entry_back(open_tiered):
    """A delayed install of an older checkpoint, or a warm that raced an invalidation, is
    dropped by Redis itself."""
    async with open_tiered() as saver:
        thread_id = f"late-{uuid.uuid4().hex}"
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        older, newer = empty_checkpoint(), empty_checkpoint()
        older["channel_values"] = {"step": "older"}
        newer["channel_values"] = {"step": "newer"}
        older["channel_versions"] = {"step": "1"}
        newer["channel_versions"] = {"step": "2"}
        assert older["id"] < newer["id"]
        prepare = saver.durable.prepare_put
        await saver.hot.put(prepare(config, newer, {}, {"step": "2"}))
        assert await saver.hot.put(prepare(config, older, {}, {"step": "1"})) is False
        found = await saver.hot.read(thread_id, "")
        assert found.record is not None
        values = saver.durable.to_tuple(found.record).checkpoint["channel_values"]
        assert values == {"step": "newer"}

        read_before = await saver.hot.read(thread_id, "")
        await saver.hot.invalidate(thread_id, "")
        assert await saver.hot.warm(found.record, read_before.gen) is False
        assert (await saver.hot.read(thread_id, "")).record is None


async def test_writes_that_reach_redis_before_their_checkpoint_are_kept(open_tiered):
    """A checkpoint's writes and its install travel on different connections: writes that
    arrive first are adopted by the install, not lost."""
    async with open_tiered() as saver:
        thread_id = f"early-{uuid.uuid4().hex}"
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        checkpoint = empty_checkpoint()
        prepared = saver.durable.prepare_put(config, checkpoint, {}, {})
        writes = saver.durable.prepare_writes(
            prepared.next_config, [("inbox", "early bird"), ("inbox", "second")], "task-1"
        )
        assert await saver.hot.put_writes(writes, "tok-w")
        assert await saver.hot.put(prepared, "tok-c")
        assert (await saver.hot.read(thread_id, "")).pending  # staged until committed
        found = await saver.hot.read(thread_id, "", ["tok-w", "tok-c"])
        assert found.record is not None
        pending = saver.durable.to_tuple(found.record).pending_writes
        assert pending == [("task-1", "inbox", "early bird"), ("task-1", "inbox", "second")]


async def test_writes_to_the_parent_arriving_after_the_child_join_its_history(open_tiered):
    """A delta channel's history at C1 is C0's value plus C0's writes; a write to C0 that
    reaches Redis after C1's install is added to it (not lost, not a reason to fall back)."""
    async with open_tiered() as saver:
        thread_id = f"late-{uuid.uuid4().hex}"
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        c0, c1 = empty_checkpoint(), empty_checkpoint()
        c0["channel_values"] = {"log": _DeltaSnapshot(["a"])}
        c0["channel_versions"] = {"log": "1"}
        c1["channel_versions"] = {"log": "2"}
        prepare = saver.durable.prepare_put
        first = prepare(config, c0, {}, {"log": "1"})
        assert await saver.hot.put(first)
        counters = {"counters_since_delta_snapshot": {"log": (1, 1)}}
        assert await saver.hot.put(prepare(first.next_config, c1, counters, {"log": "2"}))
        late = saver.durable.prepare_writes(first.next_config, [("log", "c")], "task-2")
        assert await saver.hot.put_writes(late, "tok") is False  # C0 is no longer the entry
        found = await saver.hot.read(thread_id, "", ["tok"])
        history = found.histories["log"]
        assert found.record is not None and found.record.checkpoint_id == c1["id"]
        assert history.since is None and history.seed is not None
        assert saver.serde.loads_typed(history.seed) == _DeltaSnapshot(["a"])
        assert [saver.serde.loads_typed(w[2:]) for w in history.writes] == ["c"]


async def test_deployments_sharing_a_redis_keep_their_own_hot_entries(
    postgres_db_url, other_postgres_db_url, plain_redis_url
):
    """Two databases, one Redis, the default key prefix: the same thread id in each
    deployment reads its own state, never the other's hot entry."""
    config = {"configurable": {"thread_id": "same-id"}}
    prefixes = []
    for db_url in (postgres_db_url, other_postgres_db_url):
        async with TieredSaver.from_conn_string(db_url, plain_redis_url) as saver:
            await take_turns(echo_graph(saver), config, [f"hello from {db_url[-8:]}"])
            prefixes.append(saver.hot.prefix)
    for db_url, prefix in zip((postgres_db_url, other_postgres_db_url), prefixes, strict=True):
        async with TieredSaver.from_conn_string(db_url, plain_redis_url) as replica:
            assert replica.hot.prefix == prefix  # every replica of a database agrees
            state = await echo_graph(replica).aget_state(config)
            assert human_texts(state) == [f"hello from {db_url[-8:]}"]
    assert prefixes[0] != prefixes[1], prefixes
    assert raw_keys(plain_redis_url, prefixes[0]) and raw_keys(plain_redis_url, prefixes[1])


async def test_sync_methods_work_from_worker_threads_only(open_tiered):
    async with open_tiered() as saver:
        graph = echo_graph(saver)
        config = thread_config("sync")
        await take_turns(graph, config, ["one"])
        found = await asyncio.to_thread(saver.get_tuple, config)
        assert found is not None
        listed = await asyncio.to_thread(lambda: list(saver.list(config)))
        assert listed[0].config == found.config
        with pytest.raises(asyncio.InvalidStateError, match="async API"):
            saver.get_tuple(config)


async def test_settings_select_the_tiered_and_durable_savers(postgres_db_url, plain_redis_url):
    for kind, expected in (("tiered", TieredSaver), ("postgres", DurablePostgresSaver)):
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            model="fake",
            checkpointer=kind,
            postgres_url=postgres_db_url,
            redis_url=plain_redis_url,
        )
        async with open_checkpointer(settings) as saver:
            assert type(saver) is expected
            graph = echo_graph(saver)
            config = thread_config(kind)
            await take_turns(graph, config, ["hello"])
            assert human_texts(await graph.aget_state(config)) == ["hello"]


async def test_a_stalled_event_loop_is_not_taken_for_a_redis_outage(open_tiered, postgres_db_url):
    """A synchronous node blocking the loop past the Redis timeout must not trip the breaker
    (which would journal the thread and send its reads to Postgres)."""
    async with open_tiered(redis_timeout_seconds=0.05) as saver:
        graph = echo_graph(saver)
        config = thread_config("stall")
        await take_turns(graph, config, ["one"])

        async def stall() -> None:
            await asyncio.sleep(0)
            time.sleep(0.3)  # the loop is stuck while the turn waits on Redis

        await asyncio.gather(take_turns(graph, config, ["two"]), stall())
        with psycopg.connect(postgres_db_url) as conn:
            journalled = conn.execute("SELECT count(*) FROM threadline_hot_invalid").fetchone()
        assert journalled == (0,)
        await asyncio.sleep(0.05)
        erase_thread_rows(postgres_db_url, config["configurable"]["thread_id"])
        assert human_texts(await graph.aget_state(config)) == ["one", "two"]


async def test_staged_changes_are_committed_before_the_saver_closes(open_tiered, postgres_db_url):
    config = thread_config("close")
    async with open_tiered() as writer:
        await take_turns(echo_graph(writer), config, ["one", "two"])
    erase_thread_rows(postgres_db_url, config["configurable"]["thread_id"])
    async with open_tiered() as reader:
        assert human_texts(await echo_graph(reader).aget_state(config)) == ["one", "two"]


@pytest.mark.parametrize("durability", ["exit", "async"])
async def test_the_transcript_history_is_served_from_redis_from_a_threads_first_turn(
    open_tiered, postgres_db_url, durability
):
    """The agent's transcript is a delta channel: its history starts at the thread's first
    checkpoint, which holds no value for it. Redis builds that history from the first turn
    on, so another replica reads the whole transcript with Postgres out of the picture."""
    config = thread_config("history")
    async with open_tiered() as writer:
        agent = offline_agent(writer)
        for text in ("one", "two", "three"):
            await agent.ainvoke({"messages": [HumanMessage(text)]}, config, durability=durability)
    erase_thread_rows(postgres_db_url, config["configurable"]["thread_id"])
    async with open_tiered() as replica:  # a process with nothing cached
        assert human_texts(await offline_agent(replica).aget_state(config)) == [
            "one",
            "two",
            "three",
        ]


async def test_writes_of_many_threads_are_committed_together_in_one_round_trip(
    open_tiered, monkeypatch
):
    """A thread whose next turn is not soon leaves its commit to the flush: every entry
    waiting then is committed in one Redis round trip, and another replica reads each from
    Redis (not from Postgres) afterwards."""
    threads = [f"flush-{n}-{uuid.uuid4().hex[:6]}" for n in range(12)]
    async with open_tiered() as writer, open_tiered() as replica:
        for thread_id in threads:
            config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
            await writer.aput(config, empty_checkpoint(), {"step": 0}, {})
        for thread_id in threads:
            assert (await replica.hot.read(thread_id, "")).pending  # staged, not yet served

        with redis_round_trips(monkeypatch) as sends:
            await asyncio.sleep(COMMIT_DELAY_SECONDS + 0.15)
        assert sends == [1], f"committing {len(threads)} entries took {sends[0]} round trips"
        for thread_id in threads:
            found = await replica.hot.read(thread_id, "")
            assert found.record is not None and not found.pending, thread_id


async def test_many_concurrent_reads_never_run_out_of_redis_connections(
    postgres_db_url: str, plain_redis_url: str
) -> None:
    """More concurrent hot-tier calls than redis-py's default pool holds (100) wait for a
    connection instead of failing over to Postgres. The Redis deadline is generous here: what
    is judged is the pool (an exhausted one fails a call at once), not how fast a loaded
    machine answers 600 reads (`tests/test_redis_guard.py` judges the deadline)."""
    from langchain_core.messages import HumanMessage

    from tests.fixtures.server import settings_for
    from threadline.assembly import make_graph
    from threadline.checkpointers import open_checkpointer
    from threadline.observability.metrics import HOT_READS

    settings = settings_for(
        model="fake",
        checkpointer="tiered",
        postgres_url=postgres_db_url,
        redis_url=plain_redis_url,
        redis_timeout_seconds=10,
    )
    async with open_checkpointer(settings) as saver:
        graph = make_graph(saver, settings)
        configs = [{"configurable": {"thread_id": f"many-{n}"}} for n in range(300)]
        for config in configs[:20]:
            await graph.ainvoke({"messages": [HumanMessage("hi")]}, config)  # type: ignore[arg-type]
        fallbacks = HOT_READS.labels(result="fallback")._value.get()
        await asyncio.gather(*(saver.aget_tuple(c) for c in configs * 2))  # type: ignore[arg-type]
        assert HOT_READS.labels(result="fallback")._value.get() == fallbacks
