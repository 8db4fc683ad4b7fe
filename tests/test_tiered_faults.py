"""Fault drills for the tiered saver on real servers: Redis frozen, killed, Postgres down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.checkpointers import (
    echo_graph,
    erase_thread_rows,
    human_texts,
    latest_checkpoint_id,
    take_turns,
    thread_config,
)
from threadline.checkpointers.durable import CheckpointStoreUnavailable
from threadline.checkpointers.tiered import COMMIT_DELAY_SECONDS, TieredSaver

RETRY = 0.2  # breaker cool-down, short so the drills stay fast
WRITER_RETRY = 1.5  # long enough to stay open through five frozen turns
TIMEOUT = 0.25  # per Redis call while frozen


def hot_checkpoint_id(saver: TieredSaver, redis_url: str, thread_id: str) -> str | None:
    """The checkpoint id the Redis entry holds, read with a plain client."""
    entry, _ = saver.hot.keys(thread_id, "")
    client = redis.Redis.from_url(redis_url, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        value = client.hget(entry, "id")
    finally:
        client.close()
    return value.decode() if value else None


async def assert_served_hot(graph: Any, config: dict[str, Any], db_url: str, texts: list[str]):
    """With the thread's rows gone from Postgres, only Redis can still answer."""
    await asyncio.sleep(COMMIT_DELAY_SECONDS + 0.05)  # the writer commits its last change
    erase_thread_rows(db_url, config["configurable"]["thread_id"])
    assert human_texts(await graph.aget_state(config)) == texts


async def read_until_hot(
    saver: TieredSaver, graph: Any, config: dict[str, Any], redis_url: str, db_url: str
) -> None:
    """Reads after recovery repair and re-warm the entry without outside help."""
    thread_id = config["configurable"]["thread_id"]
    deadline = time.monotonic() + 5
    while hot_checkpoint_id(saver, redis_url, thread_id) != latest_checkpoint_id(db_url, thread_id):
        assert time.monotonic() < deadline, "the saver never warmed Redis again"
        await graph.aget_state(config)
        await asyncio.sleep(RETRY / 2)


async def test_redis_frozen_mid_conversation_loses_nothing_and_recovers(
    open_tiered, redis_server_factory, postgres_db_url
):
    server = redis_server_factory()
    # The writer's breaker stays open through the freeze, so the entry from before the
    # freeze is still in Redis when it resumes: the stale state that must never be served.
    async with (
        open_tiered(
            server.url, redis_timeout_seconds=TIMEOUT, redis_retry_seconds=WRITER_RETRY
        ) as saver,
        open_tiered(
            server.url, redis_timeout_seconds=TIMEOUT, redis_retry_seconds=RETRY
        ) as replica,
    ):
        graph, other = echo_graph(saver), echo_graph(replica)
        config = thread_config("frozen")
        thread_id = config["configurable"]["thread_id"]
        await take_turns(graph, config, ["one", "two"])
        assert human_texts(await other.aget_state(config)) == ["one", "two"]  # replica warm
        stale_id = hot_checkpoint_id(saver, server.url, thread_id)
        assert stale_id == latest_checkpoint_id(postgres_db_url, thread_id)

        server.pause()
        frozen = [f"frozen {i}" for i in range(5)]
        try:
            await take_turns(graph, config, frozen)
            assert human_texts(await graph.aget_state(config)) == ["one", "two", *frozen]
        finally:
            server.resume()

        expected = ["one", "two", *frozen]
        assert hot_checkpoint_id(saver, server.url, thread_id) == stale_id
        # Neither the writer nor the replica, which never saw the outage, serves it.
        assert human_texts(await graph.aget_state(config)) == expected
        assert human_texts(await other.aget_state(config)) == expected
        # Until its breaker closes the writer keeps journalling what it writes.
        await asyncio.sleep(WRITER_RETRY)
        await read_until_hot(saver, graph, config, server.url, postgres_db_url)
        await take_turns(graph, config, ["after"])
        await assert_served_hot(other, config, postgres_db_url, [*expected, "after"])


async def test_redis_killed_and_restarted_empty_loses_nothing_and_recovers(
    open_tiered, redis_server_factory, postgres_db_url
):
    server = redis_server_factory()
    async with open_tiered(
        server.url, redis_timeout_seconds=TIMEOUT, redis_retry_seconds=RETRY
    ) as saver:
        graph = echo_graph(saver)
        config = thread_config("killed")
        await take_turns(graph, config, ["one", "two"])

        server.stop()
        down = [f"down {i}" for i in range(5)]
        await take_turns(graph, config, down)
        server.start()

        expected = ["one", "two", *down]
        assert human_texts(await graph.aget_state(config)) == expected
        await asyncio.sleep(RETRY)
        await read_until_hot(saver, graph, config, server.url, postgres_db_url)
        await assert_served_hot(graph, config, postgres_db_url, expected)


async def test_slow_redis_costs_a_bounded_wait(open_tiered, redis_server_factory):
    """A hung Redis costs one timeout, then the breaker skips it until the cool-down ends."""
    server = redis_server_factory()
    async with open_tiered(server.url, redis_timeout_seconds=0.1, redis_retry_seconds=30) as saver:
        graph = echo_graph(saver)
        config = thread_config("slow")
        await take_turns(graph, config, ["warm"])
        server.pause()
        try:
            started = time.monotonic()
            await take_turns(graph, config, [f"t{i}" for i in range(5)])
            elapsed = time.monotonic() - started
        finally:
            server.resume()
        # One call may wait for its timeout (guarded at 3x + 50 ms); the rest skip Redis.
        assert elapsed < 2.0, f"five turns took {elapsed:.2f}s with Redis hung"


async def _set_connections(db_url: str, allowed: bool) -> None:
    name = db_url.rsplit("/", 1)[1]
    admin = db_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def test_postgres_down_fails_the_turn_and_acknowledges_nothing(
    open_tiered, plain_redis_url, postgres_db_url
):
    async with open_tiered(pool_timeout_seconds=2) as saver:
        graph = echo_graph(saver)
        config = thread_config("pgdown")
        thread_id = config["configurable"]["thread_id"]
        await take_turns(graph, config, ["one"])
        durable_before = latest_checkpoint_id(postgres_db_url, thread_id)

        await _set_connections(postgres_db_url, allowed=False)
        try:
            with pytest.raises(CheckpointStoreUnavailable, match="Postgres"):
                await take_turns(graph, config, ["lost"])
        finally:
            await _set_connections(postgres_db_url, allowed=True)

        await asyncio.sleep(0.05)
        # Whatever Redis staged for the failed write was dropped, never committed.
        assert hot_checkpoint_id(saver, plain_redis_url, thread_id) in (None, durable_before)
        assert latest_checkpoint_id(postgres_db_url, thread_id) == durable_before
        async with open_tiered() as replica:
            assert human_texts(await echo_graph(replica).aget_state(config)) == ["one"]
        deadline = time.monotonic() + 15
        while True:  # the pool reconnects by itself, after its back-off
            try:
                assert human_texts(await graph.aget_state(config)) == ["one"]
                break
            except CheckpointStoreUnavailable:
                assert time.monotonic() < deadline, "the saver never reconnected to Postgres"
                await asyncio.sleep(0.2)
        await take_turns(graph, config, ["two"])
        assert human_texts(await graph.aget_state(config)) == ["one", "two"]
