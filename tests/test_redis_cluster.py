"""The hot tier and the Redis turn locks on a real Redis Cluster (3 masters, 3 replicas on
loopback): detected at start-up, every thread's keys in one slot, threads spread over the
masters; a master killed while turns run loses nothing, no read is stale, turns keep succeeding
on Postgres while the slot moves, and the hot tier serves again once the replica is promoted."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis

from tests.fixtures.server import settings_for
from tests.test_erasure import turn
from tests.test_observability import moved, scrape
from threadline.checkpointers.redis_clients import is_cluster
from threadline.dev.services import HOST
from threadline.locks import ThreadBusyError, open_turn_locks


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
    acknowledged, which requests failed (status codes) and which reads were stale."""

    def __init__(self, client: Any, threads: list[str]) -> None:
        self.client = client
        self.acknowledged: dict[str, list[str]] = {t: [] for t in threads}
        self.errors: list[int] = []
        self.stale: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._converse(t)) for t in threads]

    async def _converse(self, thread: str) -> None:
        n = 0
        while not self._stop.is_set():
            text = f"{thread}-{n}"
            response = await self.client.post("/agent/invoke", json=turn(thread, text))
            if response.status_code != 200:
                self.errors.append(response.status_code)
                continue
            self.acknowledged[thread].append(text)
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

    def check(self, finals: dict[str, list[Any]]) -> None:
        assert not self.errors, self.errors
        assert not self.stale, self.stale[:5]
        for thread, messages in finals.items():  # every acknowledged turn, once, in order
            assert [m["content"] for m in messages][0::2] == self.acknowledged[thread]


async def test_resharding_while_turns_run_loses_nothing(served: Any, redis_cluster: Any) -> None:
    run = uuid.uuid4().hex[:6]
    threads = [f"r-{run}-{n}" for n in range(20)]
    async with served("tiered", redis_url=redis_cluster.url) as client:
        conversations = Conversations(client, threads)
        await asyncio.sleep(1)
        await asyncio.to_thread(redis_cluster.reshard, 3000)  # ASK and MOVED while it runs
        await asyncio.sleep(1)
        finals = await conversations.stop()
        before = await scrape(client)
        for thread in threads:  # the hot tier serves from the new owners
            assert (await client.post("/agent/invoke", json=turn(thread, "after"))).is_success
        after = await scrape(client)

    conversations.check(finals)
    assert moved(before, after, "threadline_hot_reads_total", result="hit") >= len(threads)


async def test_a_master_killed_under_load_loses_nothing(
    server_process: Any, openai_stub: Any, postgres_db_url: str, redis_cluster: Any
) -> None:
    """Two server workers, 50 threads taking turns back to back, a master SIGKILLed."""
    import httpx

    from tests.test_server_processes import backend_env

    env = {
        **backend_env("tiered", postgres_db_url, redis_cluster.url, openai_stub),
        "THREADLINE_TURN_LOCK_TIMEOUT_SECONDS": "10",
    }
    server = server_process(env, args=("--workers", "2"))
    run = uuid.uuid4().hex[:6]
    threads = [f"f-{run}-{n:02d}" for n in range(50)]

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        warm = [client.post("/agent/invoke", json=turn(f"w-{run}-{n}", "warm")) for n in range(8)]
        assert all(r.status_code == 200 for r in await asyncio.gather(*warm))
        conversations = Conversations(client, threads)
        await asyncio.sleep(3)
        redis_cluster.masters()[0].stop()  # its replica is promoted after the node timeout
        killed_at = time.monotonic()
        resumed_after = None
        while time.monotonic() - killed_at < 60:
            await asyncio.sleep(0.5)
            if len(redis_cluster.masters()) == 3:
                before = await scrape(client)
                await asyncio.sleep(1)
                after = await scrape(client)
                hits = moved(before, after, "threadline_hot_reads_total", result="hit")
                fallbacks = moved(before, after, "threadline_hot_reads_total", result="fallback")
                if hits and not fallbacks:  # a second with Redis serving everything again
                    resumed_after = time.monotonic() - killed_at - 1
                    break
        await asyncio.sleep(2)
        finals = await conversations.stop()

    assert resumed_after is not None, "the hot tier never served again"
    conversations.check(finals)
    total = sum(len(v) for v in conversations.acknowledged.values())
    print(
        f"\nfailover: {total} turns acknowledged, 0 lost, 0 stale, 0 errors, "
        f"hot reads resumed {resumed_after:.1f}s after the kill"
    )
