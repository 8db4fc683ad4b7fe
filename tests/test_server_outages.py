"""A store outage is a 503 with a message on every route, `/readyz` says so, and the server
serves again on its own once the store is back."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.fixtures.server import asgi_client, settings_for
from tests.test_observability import moved, scrape
from threadline.observability.logs import RequestIdFilter


def turn(text: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": "t"}},
    }


class Outage:
    """Refuse and cut every connection to one database of the session server."""

    def __init__(self, admin_url: str, db_url: str) -> None:
        self.admin_url = admin_url
        self.name = urlsplit(db_url).path.lstrip("/")

    def _run(self, *statements: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)

    def begin(self) -> None:
        self._run(
            f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()",
        )

    def end(self) -> None:
        self._run(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def outage(postgres_url: str, postgres_db_url: str) -> Iterator[Outage]:
    cut = Outage(postgres_url, postgres_db_url)
    yield cut
    cut.end()


@pytest.fixture
async def client(postgres_db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        model="fake",
        checkpointer="postgres",
        postgres_url=postgres_db_url,
        postgres_pool_timeout_seconds=1.0,
    )
    async with asgi_client(settings) as client:
        yield client


async def test_every_route_is_503_while_postgres_is_out_and_recovers(
    client: httpx.AsyncClient, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await client.post("/agent/invoke", json=turn("before"))).status_code == 200
    before = await scrape(client)
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="threadline")
    outage.begin()
    sent = []
    for method, path, body in [
        ("GET", "/threads/t", None),
        ("GET", "/threads/t/history", None),
        ("DELETE", "/threads/t", None),
        ("POST", "/agent/invoke", turn("during")),
    ]:
        request_id = f"{method}{path.replace('/', '-')}"
        sent.append(request_id)
        response = await client.request(
            method, path, json=body, headers={"X-Request-Id": request_id}
        )
        assert response.status_code == 503, (path, response.text)
        assert "unavailable" in response.json()["detail"]
    assert (await client.get("/readyz")).status_code == 503
    logged = [(getattr(r, "request_id", None), r.name, r.getMessage()) for r in caplog.records]
    outages = [line for line in logged if line[1] == "threadline.server.outages"]
    assert outages and all(line[0] in sent for line in outages), outages  # with their ids
    turns = [(line[0], line[2]) for line in logged if line[2].startswith("turn ")]
    assert turns == [
        ("POST-agent-invoke", "turn failed: 503 store_unavailable, cause LockBackendError")
    ]

    outage.end()
    started = time.monotonic()
    while (await client.get("/readyz")).status_code != 200:
        # The pool retries its connections at most a second apart (compat.cap_pool_retry_delays).
        assert time.monotonic() - started < 3, "did not recover"
    after = await scrape(client)
    assert moved(before, after, "threadline_turns_total", outcome="store_unavailable") == 1
    assert (await client.post("/agent/invoke", json=turn("after"))).status_code == 200
    thread = (await client.get("/threads/t")).json()
    assert [m["content"] for m in thread["messages"] if m["type"] == "human"] == [
        "before",
        "after",
    ]
