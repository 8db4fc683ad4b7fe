"""The hot tier and the Redis turn locks on a real Redis Cluster (3 masters, 3 replicas on
loopback): detected at start-up, every thread's keys in one slot, threads spread over the
masters; a master killed while turns run loses nothing, no read is stale, turns keep succeeding
on Postgres while the slot moves, and the hot tier serves again once the replica is promoted."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from redis.backoff import NoBackoff
from redis.cluster import key_slot
from redis.retry import Retry

from tests.fixtures.server import settings_for
from tests.test_erasure import turn
from tests.test_observability import moved, scrape
from threadline.checkpointers.hot import HotTier
from threadline.checkpointers.redis_clients import is_cluster
from threadline.dev.services import HOST
from threadline.locks import ThreadBusyError, open_turn_locks

# How long the tiered saver skips Redis after a failed call (its `redis_retry_seconds`).
BREAKER_OPEN_SECONDS = 1.0

RESHARDED_SLOTS = 3000

SlotRanges = list[tuple[int, int, int]]  # (first slot, last slot, master's port)


def node_client(port: int) -> redis.Redis:
    """A client that gives up at once on a dead node (redis-py 8 retries with backoff for
    seconds by default, which would also stall the test's event loop)."""
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def slot_ranges(cluster: Any) -> SlotRanges:
    """The slot map as the first live node sees it (a killed node is skipped)."""
    for node in cluster.nodes:
        client = node_client(node.port)
        try:
            ranges = client.execute_command("CLUSTER SLOTS")
        except redis.RedisError:
            continue
        finally:
            client.close()
        return [(int(r[0]), int(r[1]), int(r[2][1])) for r in ranges]
    raise AssertionError("no cluster node answers CLUSTER SLOTS")


def replica_in_sync(port: int) -> bool:
    """Whether the master on `port` has a replica online (a replica that never synced refuses
    to fail over: its data is too old)."""
    client = node_client(port)
    try:
        info = client.info("replication")
    finally:
        client.close()
    return any(
        isinstance(value, dict) and value.get("state") == "online"
        for name, value in info.items()
        if name.startswith("slave")
    )


def owner(ranges: SlotRanges, slot: int) -> int | None:
    return next((port for first, last, port in ranges if first <= slot <= last), None)


def slot_of(thread_id: str) -> int:
    """The slot of the thread's keys as the hot tier names them (its hash tag: one slot)."""
    tier = HotTier(redis.Redis(), JsonPlusSerializer())  # never connects: only names keys
    entry, index = tier.keys(thread_id, "")
    assert key_slot(entry.encode()) == key_slot(index.encode())
    return key_slot(entry.encode())


def threads_where(prefix: str, wanted: Callable[[int], bool], count: int) -> list[str]:
    """`count` thread ids `prefix-N` whose slot passes `wanted`."""
    candidates: Iterator[str] = (f"{prefix}-{n:03d}" for n in itertools.count())
    return list(itertools.islice((t for t in candidates if wanted(slot_of(t))), count))


async def journalled(postgres_url: str) -> int:
    """Rows in the invalidation journal: hot entries some worker could not update, not yet
    repaired (the test's database is its own, so every row is this test's)."""
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM threadline_hot_invalid")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_cluster_is_detected(redis_cluster: Any, plain_redis_url: str) -> None:
    assert await is_cluster(redis_cluster.url)
    assert not await is_cluster(plain_redis_url)
    assert not await is_cluster(redis_cluster.url, "false")


async def test_tiered_threads_spread_over_the_masters(served: Any, redis_cluster: Any) -> None:
    run = uuid.uuid4().hex[:6]
    async with served("tiered", redis_url=redis_cluster.url) as client:
        before = await scrape(client)
        for n in range(12):
            for text in ("one", "two", "three"):
                response = await client.post("/agent/invoke", json=turn(f"c-{run}-{n}", text))
                assert response.status_code == 200, response.text
        for n in range(12):
            shown = (await client.get(f"/threads/c-{run}-{n}")).json()["messages"]
            assert [m["content"] for m in shown][0::2] == ["one", "two", "three"]
        after = await scrape(client)
    assert moved(before, after, "threadline_hot_reads_total", result="hit") >= 12 * 2
    assert moved(before, after, "threadline_hot_reads_total", result="fallback") == 0
    holding = [
        node.port
        for node in redis_cluster.masters()
        if redis.Redis(host=HOST, port=node.port).dbsize() > 0
    ]
    assert len(holding) >= 2  # the threads' slots are spread over the masters


async def test_redis_turn_locks_on_a_cluster(redis_cluster: Any) -> None:
    settings = settings_for(checkpointer="redis", redis_url=redis_cluster.url)
    async with open_turn_locks(settings) as first, open_turn_locks(settings) as second:
        async with first.hold(["t-1", "t-2", "t-3"], 1):
            with pytest.raises(ThreadBusyError):
                async with second.hold(["t-2"], 0.2):
                    pass
        async with second.hold(["t-2"], 0.2):
            pass


class Conversations:
    """Threads taking turns back to back until stopped, each turn read back at once: what was
    acknowledged (and when), which requests failed (status codes) and which reads were stale."""

    def __init__(self, client: Any, threads: list[str]) -> None:
        self.client = client
        self.acknowledged: dict[str, list[str]] = {t: [] for t in threads}
        self.acknowledged_at: list[tuple[float, str]] = []  # (monotonic time, thread)
        self.errors: list[tuple[int, str]] = []  # status and the answer's detail
        self.stale: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._converse(t)) for t in threads]

    async def _converse(self, thread: str) -> None:
        n = 0
        while not self._stop.is_set():
            text = f"{thread}-{n}"
            response = await self.client.post("/agent/invoke", json=turn(thread, text))
            if response.status_code != 200:
                self.errors.append((response.status_code, response.text[:300]))
                continue
            self.acknowledged[thread].append(text)
            self.acknowledged_at.append((time.monotonic(), thread))
            shown = (await self.client.get(f"/threads/{thread}")).json()["messages"]
            if [m["content"] for m in shown][0::2] != self.acknowledged[thread]:
                self.stale.append(text)
            n += 1

    async def stop(self) -> dict[str, list[Any]]:
        """Stop, and return every thread's stored transcript."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return {
            t: (await self.client.get(f"/threads/{t}")).json()["messages"]
            for t in self.acknowledged
        }

    def lost(self, finals: dict[str, list[Any]]) -> int:
        """Acknowledged turns missing from the stored transcripts."""
        return sum(
            len(set(texts) - {m["content"] for m in finals[thread][0::2]})
            for thread, texts in self.acknowledged.items()
        )

    def check(self, finals: dict[str, list[Any]]) -> None:
        assert not self.errors, self.errors
        assert not self.stale, self.stale[:5]
        for thread, messages in finals.items():  # every acknowledged turn, once, in order
            assert [m["content"] for m in messages][0::2] == self.acknowledged[thread]


async def test_resharding_while_turns_run_loses_nothing(served: Any, redis_cluster: Any) -> None:
    """The threads live in the slots that move: `redis-cli --cluster reshard` takes the
    source's lowest-numbered slots, and `reshard` moves them from the first master."""
    before_map = slot_ranges(redis_cluster)
    source = redis_cluster.masters()[0].port
    owned = sorted(
        slot
        for first, last, port in before_map
        if port == source
        for slot in range(first, last + 1)
    )
    moving = set(owned[:RESHARDED_SLOTS])
    threads = threads_where(f"r-{uuid.uuid4().hex[:6]}", moving.__contains__, 20)
    async with served("tiered", redis_url=redis_cluster.url) as client:
        conversations = Conversations(client, threads)
        await asyncio.sleep(1)
        await asyncio.to_thread(redis_cluster.reshard, RESHARDED_SLOTS)  # ASK, MOVED meanwhile
        await asyncio.sleep(1)
        finals = await conversations.stop()
        # The hot tier serves every thread from its new owner. A call that timed out around
        # the move opens the breaker for a second (turns go to Postgres meanwhile): a round of
        # turns that met it is taken again once it has closed.
        for attempt in range(3):
            before = await scrape(client)
            for thread in threads:
                response = await client.post("/agent/invoke", json=turn(thread, f"after {attempt}"))
                assert response.is_success
            after = await scrape(client)
            if moved(before, after, "threadline_hot_reads_total", result="hit") >= len(threads):
                break
            await asyncio.sleep(BREAKER_OPEN_SECONDS + 0.1)

    after_map = slot_ranges(redis_cluster)
    moved_threads = [
        t for t in threads if owner(before_map, slot_of(t)) != owner(after_map, slot_of(t))
    ]
    assert moved_threads, f"no thread's slot moved: {before_map} -> {after_map}"
    conversations.check(finals)
    assert moved(before, after, "threadline_hot_reads_total", result="hit") >= len(threads)


async def test_a_master_killed_under_load_loses_nothing(
    server_process: Any, openai_stub: Any, postgres_db_url: str, redis_cluster: Any
) -> None:
    """Two server workers, 50 threads taking turns back to back (half of them on the victim's
    slots), a master SIGKILLed: no shutdown, so its replica gets no chance to catch up."""
    import httpx

    from tests.test_server_processes import backend_env

    env = {
        **backend_env("tiered", postgres_db_url, redis_cluster.url, openai_stub),
        "THREADLINE_TURN_LOCK_TIMEOUT_SECONDS": "10",
    }
    server = server_process(env, args=("--workers", "2"))
    run = uuid.uuid4().hex[:6]
    victim = redis_cluster.masters()[0]
    ranges = slot_ranges(redis_cluster)
    orphaned = threads_where(f"f-{run}-v", lambda s: owner(ranges, s) == victim.port, 25)
    others = threads_where(f"f-{run}-o", lambda s: owner(ranges, s) != victim.port, 25)

    deadline = time.monotonic() + 30
    while not replica_in_sync(victim.port):
        assert time.monotonic() < deadline, "the victim's replica never synced"
        await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        warm = [client.post("/agent/invoke", json=turn(f"w-{run}-{n}", "warm")) for n in range(8)]
        assert all(r.status_code == 200 for r in await asyncio.gather(*warm))
        conversations = Conversations(client, orphaned + others)
        await asyncio.sleep(3)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)  # its replica is promoted after the node timeout
        killed_at = time.monotonic()
        resumed_after = None
        most_journalled = 0
        while time.monotonic() - killed_at < 60:
            await asyncio.sleep(0.5)
            most_journalled = max(most_journalled, await journalled(postgres_db_url))
            now = await asyncio.to_thread(slot_ranges, redis_cluster)  # not on the test's loop
            if all(port != victim.port for _, _, port in now):  # its slots have a new master
                before = await scrape(client)
                await asyncio.sleep(1)
                after = await scrape(client)
                hits = moved(before, after, "threadline_hot_reads_total", result="hit")
                fallbacks = moved(before, after, "threadline_hot_reads_total", result="fallback")
                if hits and not fallbacks:  # a second with Redis serving everything again
                    resumed_after = time.monotonic() - killed_at - 1
                    break
        repaired_at = time.monotonic()  # turns go on: reads and writes repair the suspects
        while await journalled(postgres_db_url) and time.monotonic() - repaired_at < 20:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        finals = await conversations.stop()
    left_in_journal = await journalled(postgres_db_url)

    acknowledged = sum(len(v) for v in conversations.acknowledged.values())
    errors = len(conversations.errors)
    resumed = f"{resumed_after:.1f}s" if resumed_after is not None else "never"
    print(
        f"\nfailover: {acknowledged + errors} turns sent, {acknowledged} acknowledged, "
        f"{conversations.lost(finals)} lost, {len(conversations.stale)} stale, {errors} errors, "
        f"hot reads resumed {resumed} after the kill; journal: up to {most_journalled} "
        f"suspects, {left_in_journal} left"
    )
    assert resumed_after is not None, "the hot tier never served again"
    log = server.log()
    assert not conversations.errors, (conversations.errors, log[log.find("Traceback") :][:6000])
    conversations.check(finals)
    during = [
        thread
        for at, thread in conversations.acknowledged_at
        if killed_at < at < killed_at + resumed_after and thread in orphaned
    ]
    assert during, "no turn on the killed master's threads went through while the slot moved"
    # Writes Redis missed were journalled in Postgres for every worker, then repaired.
    assert most_journalled > 0
    assert left_in_journal == 0
