"""API keys, tenant-scoped threads, the threads API and DELETE, on Postgres."""

from __future__ import annotations

import base64
import logging

import httpx
import psycopg
import pytest

from tests.fixtures.server import asgi_client, settings_for
from threadline.settings import Settings

KEYS = "key-alpha:alpha,key-beta:beta"
ALPHA = {"Authorization": "Bearer key-alpha"}
BETA = {"Authorization": "Bearer key-beta"}


def turn(thread_id: str, text: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


async def say(client: httpx.AsyncClient, headers: dict[str, str], thread: str, text: str) -> list:
    response = await client.post("/agent/invoke", json=turn(thread, text), headers=headers)
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["output"]["messages"]]


def stored_thread_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT thread_id FROM checkpoints UNION SELECT thread_id FROM checkpoint_blobs "
            "UNION SELECT thread_id FROM checkpoint_writes"
        ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def settings(postgres_db_url: str) -> Settings:
    return settings_for(
        model="fake", checkpointer="postgres", postgres_url=postgres_db_url, api_keys=KEYS
    )


async def test_same_thread_id_in_two_tenants_is_two_threads(
    settings: Settings, postgres_db_url: str
) -> None:
    async with asgi_client(settings) as client:
        await say(client, ALPHA, "shared", "alpha's secret is 42")
        beta_view = await say(client, BETA, "shared", "hello from beta")
        assert beta_view == ["hello from beta", beta_view[1]]
        assert "42" not in beta_view[1]

        alpha = (await client.get("/threads/shared", headers=ALPHA)).json()
        beta = (await client.get("/threads/shared", headers=BETA)).json()
        assert alpha["messages"][0]["content"] == "alpha's secret is 42"
        assert beta["messages"][0]["content"] == "hello from beta"
        assert len(alpha["messages"]) == len(beta["messages"]) == 2

        await say(client, ALPHA, "alpha-only", "mine")
        assert (await client.get("/threads/alpha-only", headers=BETA)).status_code == 404
        assert (await client.get("/threads/alpha-only/history", headers=BETA)).status_code == 404
        assert (await client.delete("/threads/alpha-only", headers=BETA)).status_code == 404
        assert (await client.get("/threads/alpha-only", headers=ALPHA)).status_code == 200

    assert stored_thread_ids(postgres_db_url) == {"alpha/shared", "beta/shared", "alpha/alpha-only"}


async def test_a_thread_id_cannot_name_another_tenants_key(settings: Settings) -> None:
    async with asgi_client(settings) as client:
        await say(client, BETA, "target", "beta only")
        forged = await client.post("/agent/invoke", json=turn("beta/target", "hi"), headers=ALPHA)
        assert forged.status_code == 422
        assert "thread_id must be" in forged.json()["detail"]
        by_header = await client.post(
            "/agent/invoke",
            json={"input": {"messages": [{"type": "human", "content": "hi"}]}},
            headers={**ALPHA, "X-Thread-Id": "beta/target"},
        )
        assert by_header.status_code == 422
        by_path = await client.get("/threads/beta%2Ftarget", headers=ALPHA)
        assert by_path.status_code in (404, 422)


async def test_every_route_but_health_needs_a_key(settings: Settings) -> None:
    async with asgi_client(settings) as client:
        body = turn("t", "hi")
        assert (await client.post("/agent/invoke", json=body)).status_code == 401
        wrong = await client.post(
            "/agent/invoke", json=body, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("/threads/t")).status_code == 401
        assert (await client.delete("/threads/t")).status_code == 401
        assert (await client.get("/threads/t/history")).status_code == 401
        assert (await client.get("/agent/input_schema")).status_code == 401
        assert (await client.post("/chat/stream_log", json=body)).status_code == 401
        playground = await client.get("/chat/playground/")
        assert playground.status_code == 401
        assert playground.headers["www-authenticate"].startswith("Basic")
        basic = base64.b64encode(b"anyone:key-beta").decode()
        as_basic = await client.post(
            "/agent/invoke", json=body, headers={"Authorization": f"Basic {basic}"}
        )
        assert as_basic.status_code == 200
        assert (await client.get("/threads/t", headers=BETA)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_delete_removes_the_thread_everywhere(
    settings: Settings, postgres_db_url: str
) -> None:
    async with asgi_client(settings) as client:
        for text in ("one", "two", "three"):
            await say(client, ALPHA, "doomed", text)
        await say(client, ALPHA, "kept", "stay")
        history = (await client.get("/threads/doomed/history", headers=ALPHA)).json()
        assert [c["message_count"] for c in history["checkpoints"]] == [6, 4, 2]

        deleted = await client.delete("/threads/doomed", headers=ALPHA)
        assert deleted.status_code == 200 and deleted.json()["erased_threads"] == 1
        assert (await client.get("/threads/doomed", headers=ALPHA)).status_code == 404
        assert (await client.get("/threads/doomed/history", headers=ALPHA)).status_code == 404
        assert (await client.delete("/threads/doomed", headers=ALPHA)).status_code == 404
        assert stored_thread_ids(postgres_db_url) == {"alpha/kept"}

        again = await say(client, ALPHA, "doomed", "fresh start")
        assert len(again) == 2


async def test_history_pages_through_checkpoints(settings: Settings) -> None:
    async with asgi_client(settings) as client:
        for n in range(5):
            await say(client, ALPHA, "paged", f"turn {n}")
        seen: list[int] = []
        before = None
        pages = 0
        while True:
            params = {"limit": 2, **({"before": before} if before else {})}
            page = (await client.get("/threads/paged/history", params=params, headers=ALPHA)).json()
            pages += 1
            seen += [c["message_count"] for c in page["checkpoints"]]
            before = page["next_before"]
            if before is None:
                break
        assert pages == 3
        assert seen == [10, 8, 6, 4, 2]


async def test_without_keys_the_server_is_single_tenant_and_says_so(
    postgres_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(model="fake", checkpointer="postgres", postgres_url=postgres_db_url)
    with caplog.at_level(logging.WARNING, logger="threadline.server"):
        async with asgi_client(settings) as client:
            await say(client, {}, "open", "hi")
            assert (await client.get("/threads/open")).status_code == 200
    assert any("single-tenant" in r.getMessage() for r in caplog.records)
    assert stored_thread_ids(postgres_db_url) == {"open"}


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_api_docs_need_a_key_when_keys_are_set(path: str) -> None:
    settings = settings_for(model="fake", checkpointer="memory", api_keys=KEYS)
    async with asgi_client(settings) as client:
        refused = await client.get(path)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        allowed = await client.get(path, headers={"Authorization": "Bearer key-alpha"})
        assert allowed.status_code == 200
        if path == "/openapi.json":
            assert "/agent/invoke" in allowed.json()["paths"]
    published = settings_for(model="fake", checkpointer="memory", api_keys=KEYS, publish_docs=True)
    async with asgi_client(published) as client:
        assert (await client.get(path)).status_code == 200
