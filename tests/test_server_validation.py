"""Bad input gets a clear 4xx before anything is run or stored; never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fixtures.server import asgi_client, settings_for

MAX_CHARS = 200
MAX_MESSAGES = 3


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        model="fake",
        checkpointer="memory",
        max_message_chars=MAX_CHARS,
        max_messages_per_request=MAX_MESSAGES,
    )
    async with asgi_client(settings) as client:
        yield client


def human(text: str) -> dict[str, str]:
    return {"type": "human", "content": text}


def body(thread_id: object = "t", messages: list | None = None, **configurable: object) -> dict:
    return {
        "input": {"messages": messages if messages is not None else [human("hi")]},
        "config": {"configurable": {"thread_id": thread_id, **configurable}},
    }


async def assert_nothing_stored(client: httpx.AsyncClient, thread_id: str = "t") -> None:
    assert (await client.get(f"/threads/{thread_id}")).status_code == 404


@pytest.mark.parametrize("thread_id", ["", "has space", "slash/inside", "x" * 129, 7, "ümlaut"])
async def test_invalid_thread_ids_are_422(client: httpx.AsyncClient, thread_id: object) -> None:
    response = await client.post("/agent/invoke", json=body(thread_id))
    assert response.status_code == 422
    assert "thread_id" in response.text


async def test_a_thread_is_required(client: httpx.AsyncClient) -> None:
    response = await client.post("/agent/invoke", json={"input": {"messages": [human("hi")]}})
    assert response.status_code == 422
    assert "X-Thread-Id" in response.json()["detail"]


async def test_too_many_messages_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agent/invoke", json=body(messages=[human("m")] * (MAX_MESSAGES + 1))
    )
    assert response.status_code == 413
    assert f"the limit is {MAX_MESSAGES}" in response.json()["detail"]
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "content",
    ["x" * (MAX_CHARS + 1), [{"type": "text", "text": "y" * (MAX_CHARS + 1)}]],
    ids=["string", "parts"],
)
async def test_an_oversized_message_is_413(client: httpx.AsyncClient, content: object) -> None:
    response = await client.post(
        "/agent/invoke", json=body(messages=[{"type": "human", "content": content}])
    )
    assert response.status_code == 413
    assert f"the limit is {MAX_CHARS}" in response.json()["detail"]
    await assert_nothing_stored(client)


async def test_an_oversized_body_is_413_before_it_is_parsed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agent/invoke",
        content=b"{" + b" " * (MAX_MESSAGES * MAX_CHARS * 4 + 70_000) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


async def test_batch_limits_apply_to_every_input(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agent/batch",
        json={
            "inputs": [{"messages": [human("ok")]}, {"messages": [human("z" * (MAX_CHARS + 5))]}],
            "config": [
                {"configurable": {"thread_id": "a"}},
                {"configurable": {"thread_id": "b"}},
            ],
        },
    )
    assert response.status_code == 413
    await assert_nothing_stored(client, "a")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"input": {"messages": "hi"}, "config": {"configurable": {"thread_id": "t"}}}', ""),
        (b'{"input": {"messages": [{"type": "alien"}]}, "config": {"configurable": '
         b'{"thread_id": "t"}}}', ""),
        (b'{"input": {}, "config": {"configurable": {"thread_id": "t"}}}', ""),
    ],
    ids=["not-json", "not-an-object", "messages-not-a-list", "unknown-message-type", "no-input"],
)  # fmt: skip
async def test_malformed_bodies_are_422(
    client: httpx.AsyncClient, payload: bytes, expected: str
) -> None:
    response = await client.post(
        "/agent/invoke", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert expected in response.text
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "override",
    [
        {"max_context_tokens": 10},
        {"max_context_tokens": "lots"},
        {"memory_strategy": "forget-everything"},
    ],
)
async def test_bad_overrides_are_422_and_store_nothing(
    client: httpx.AsyncClient, override: dict[str, object]
) -> None:
    response = await client.post("/agent/invoke", json=body(**override))
    assert response.status_code == 422
    assert next(iter(override)) in response.text
    await assert_nothing_stored(client)


async def test_a_good_override_reaches_the_turn(client: httpx.AsyncClient) -> None:
    response = await client.post("/agent/invoke", json=body(max_context_tokens=300))
    assert response.status_code == 200
    assert response.json()["output"]["telemetry"]["budget"] == 300


async def test_bad_idempotency_key_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agent/invoke", json=body(), headers={"Idempotency-Key": "k" * 300}
    )
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["detail"]


async def test_threads_api_checks_its_parameters(client: httpx.AsyncClient) -> None:
    assert (await client.get("/threads/bad id")).status_code == 422
    assert (await client.get("/threads/t/history", params={"limit": 0})).status_code == 422
    assert (await client.get("/threads/t/history", params={"before": "x;y"})).status_code == 422
    assert (await client.get("/threads/never")).status_code == 404


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"input": {"messages": [{"type": "human", "content": "\\ud800"}]}}', "Unicode"),
        (b'{"input": {"messages": [{"type": "human", "content": "hi", "additional_kwargs": '
         b'{"n": -9223372036854775809}}]}}', "64 bits"),
        (b'{"input": {"messages": [{"type": "human", "content": "hi", "additional_kwargs": '
         + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}]}}", "nested deeper"),
    ],
    ids=["lone-surrogate", "huge-integer", "deep-nesting"],
)  # fmt: skip
@pytest.mark.parametrize("route", ["invoke", "stream"])
async def test_json_that_cannot_be_stored_is_422(
    client: httpx.AsyncClient, payload: bytes, expected: str, route: str
) -> None:
    response = await client.post(
        f"/agent/{route}",
        content=payload,
        headers={"content-type": "application/json", "X-Thread-Id": "t"},
    )
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    await assert_nothing_stored(client)


async def test_a_turn_without_messages_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/agent/invoke", json=body(messages=[]))
    assert response.status_code == 422
    assert "at least one new message" in response.json()["detail"]
    await assert_nothing_stored(client)
