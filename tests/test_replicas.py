"""Several replicas for real: three `threadline serve` processes with two workers each, on the
tiered backend, behind no balancer. Fifty threads take twenty turns each, every thread going
round the servers in its own random order (so its turns are spread over all of them, and over
both workers of each), and each acknowledged turn is read back right away from a server picked
at random.

Every acknowledged turn must be stored exactly once and in order, and no read may be stale (show
fewer turns than were acknowledged before it was sent).
"""

from __future__ import annotations

import asyncio
import random
import uuid

import httpx

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import ServerProcessFactory
from tests.test_server_processes import backend_env, contents, turn

SERVERS = 3
THREADS = 50
TURNS = 20


async def test_three_replicas_two_workers_each_never_lose_or_show_stale(
    server_process: ServerProcessFactory,
    openai_stub: OpenAIStub,
    postgres_db_url: str,
    plain_redis_url: str,
) -> None:
    env = backend_env("tiered", postgres_db_url, plain_redis_url, openai_stub)
    servers = [server_process(env, ready=False, args=("--workers", "2")) for _ in range(SERVERS)]
    for server in servers:
        server.wait_ready()
    urls = [s.url for s in servers]
    run = uuid.uuid4().hex[:8]  # Redis is shared by the session's tests
    rng = random.Random(7)
    stale: list[str] = []
    served_by: dict[str, set[str]] = {}

    async def thread(client: httpx.AsyncClient, n: int) -> list[str]:
        thread_id = f"replica-{run}-{n:02d}"
        acknowledged: list[str] = []
        order = random.Random(n).sample(urls, SERVERS)  # each server in turn, in a random order
        for t in range(TURNS):
            text = f"{n:02d}-{t:02d}"
            url = order[t % SERVERS]
            served_by.setdefault(thread_id, set()).add(url)
            response = await client.post(f"{url}/agent/invoke", json=turn(text, thread_id))
            assert response.status_code == 200, response.text
            acknowledged.append(text)
            read = await client.get(f"{rng.choice(urls)}/threads/{thread_id}")
            humans = contents(read.json()["messages"])[0::2]
            if humans[: len(acknowledged)] != acknowledged:
                stale.append(f"{thread_id} after {text}: {humans[-3:]}")
        return acknowledged

    limits = httpx.Limits(max_keepalive_connections=0)  # new connections: every worker serves
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        # A cold worker's first turns pay for imports and open its pools: not what is tested.
        warm = [
            client.post(f"{url}/agent/invoke", json=turn("warm up", f"warm-{run}-{i}-{n}"))
            for i, url in enumerate(urls)
            for n in range(8)
        ]
        assert all(r.status_code == 200 for r in await asyncio.gather(*warm))
        sent = await asyncio.gather(*(thread(client, n) for n in range(THREADS)))
        finals = [
            (await client.get(f"{rng.choice(urls)}/threads/replica-{run}-{n:02d}")).json()
            for n in range(THREADS)
        ]

    assert not stale, stale[:5]
    for acknowledged, final in zip(sent, finals, strict=True):
        transcript = contents(final["messages"])
        assert transcript[0::2] == acknowledged  # each turn once, in order
        assert transcript[1::2] == [f"echo: {text}" for text in acknowledged]
    assert all(len(used) == SERVERS for used in served_by.values())  # spread over every server
