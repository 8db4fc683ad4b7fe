"""Messages that are not messages, or are too large as a whole, are a 4xx on every turn
route, and nothing is stored (hardening found from outside: each used to be a 500)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.server import asgi_client, settings_for

MAX_CHARS = 200
ROUTES = ["invoke", "stream", "stream_events", "batch"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(model="fake", checkpointer="memory", max_message_chars=MAX_CHARS)
    async with asgi_client(settings) as client:
        yield client


def request_for(route: str, messages: list[Any], thread_id: str = "t") -> dict[str, Any]:
    config = {"configurable": {"thread_id": thread_id}}
    if route == "batch":
        return {"inputs": [{"messages": messages}], "config": [config]}
    return {"input": {"messages": messages}, "config": config}


async def post(client: httpx.AsyncClient, route: str, payload: Any) -> httpx.Response:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await client.post(
        f"/agent/{route}", content=raw, headers={"content-type": "application/json"}
    )


async def assert_nothing_stored(client: httpx.AsyncClient, thread_id: str = "t") -> None:
    assert (await client.get(f"/threads/{thread_id}")).status_code == 404


NOT_MESSAGES = {
    "number": [5],
    "string": ["hi"],
    "null": [None],
    "pair": [["human", "hi"]],
    "no-type": [{"content": "x"}],
    "wizard": [{"type": "wizard", "content": "x"}],
    "content-not-text": [{"type": "human", "content": 5}],
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("messages", NOT_MESSAGES.values(), ids=NOT_MESSAGES.keys())
async def test_messages_that_are_not_messages_are_422(
    client: httpx.AsyncClient, route: str, messages: list[Any]
) -> None:
    response = await post(client, route, request_for(route, messages))
    assert response.status_code == 422, response.text
    assert "message 1" in response.json()["detail"]
    await assert_nothing_stored(client)


async def test_a_batch_with_one_bad_entry_runs_none(client: httpx.AsyncClient) -> None:
    response = await post(
        client,
        "batch",
        {
            "inputs": [
                {"messages": [{"type": "human", "content": "fine"}]},
                {"messages": [{"type": "wizard", "content": "x"}]},
            ],
            "config": [{"configurable": {"thread_id": "a"}}, {"configurable": {"thread_id": "b"}}],
        },
    )
    assert response.status_code == 422, response.text
    await assert_nothing_stored(client, "a")


@pytest.mark.parametrize("route", ["invoke", "stream"])
async def test_an_integer_of_5000_digits_is_422(client: httpx.AsyncClient, route: str) -> None:
    payload = (
        b'{"input": {"messages": [{"type": "human", "content": "hi", "additional_kwargs": {"n": '
        + b"9" * 5000
        + b'}}]}, "config": {"configurable": {"thread_id": "t"}}}'
    )
    response = await post(client, route, payload)
    assert response.status_code == 422, response.text
    await assert_nothing_stored(client)


BLOATED = {
    "id": {"id": "i" * 20_000},
    "response_metadata": {"response_metadata": {"x": "m" * 20_000}},
    "additional_kwargs": {"additional_kwargs": {"x": "k" * 20_000}},
    "tool-call-args": {
        "type": "ai",
        "tool_calls": [{"name": "f", "args": {"a": "z" * 20_000}, "id": "c1"}],
    },
    "content-parts": {"content": [{"type": "text", "text": ""} for _ in range(500)]},
}


@pytest.mark.parametrize("route", ["invoke", "stream", "batch"])
@pytest.mark.parametrize("extra", BLOATED.values(), ids=BLOATED.keys())
async def test_the_whole_message_counts_against_the_size_limit(
    client: httpx.AsyncClient, route: str, extra: dict[str, Any]
) -> None:
    message = {"type": "human", "content": "small", **extra}
    response = await post(client, route, request_for(route, [message]))
    assert response.status_code == 413, response.text
    assert "message 1" in response.json()["detail"]
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "human", "content": "nul \u0000 inside"},
        {"type": "human", "content": "hi", "id": "id\u0000x"},
        {"type": "human", "content": "hi", "name": "n\u0000"},
    ],
    ids=["content", "id", "name"],
)
async def test_nul_characters_are_refused(
    client: httpx.AsyncClient, message: dict[str, Any]
) -> None:
    response = await post(client, "invoke", request_for("invoke", [message]))
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"]
    await assert_nothing_stored(client)


async def test_a_message_whose_id_is_already_in_the_thread_is_refused(
    client: httpx.AsyncClient,
) -> None:
    first = {"type": "human", "content": "first", "id": "m-1"}
    assert (await post(client, "invoke", request_for("invoke", [first]))).status_code == 200
    other = {"type": "human", "content": "a different message", "id": "m-1"}
    response = await client.post(
        "/agent/invoke",
        json=request_for("invoke", [other]),
        headers={"Idempotency-Key": "new-key"},
    )
    assert response.status_code == 409, response.text
    assert "m-1" in response.json()["detail"]
    state = (await client.get("/threads/t")).json()
    assert [m["content"] for m in state["messages"] if m["type"] == "human"] == ["first"]


async def test_refused_input_never_reaches_the_log(server_process: Any, tmp_path: Any) -> None:
    """The README promises that message text is never logged: refusals included."""
    canary = "canary-7f3a9 do not log me"
    server = server_process(
        {"THREADLINE_MODEL": "fake", "THREADLINE_SQLITE_PATH": str(tmp_path / "t.sqlite")}
    )
    bad_requests = [
        ("batch", request_for("batch", [{"type": "wizard", "content": canary}])),
        ("invoke", request_for("invoke", [{"content": canary}])),
        ("invoke", request_for("invoke", [{"type": "human", "content": canary + "\u0000"}])),
        ("stream", request_for("stream", [{"type": "human", "content": canary * 3000}])),
        ("invoke", request_for("invoke", [{"type": "human", "content": 5, "name": canary}])),
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for route, payload in bad_requests:
            response = await post(client, route, payload)
            assert 400 <= response.status_code < 500, response.text
    server.stop()
    assert canary not in server.log()
