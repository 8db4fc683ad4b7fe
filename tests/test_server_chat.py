"""The chat playground at /chat, driven the way its page drives it.

The page loads /chat/playground/, then POSTs `{"input": {"messages": <whole conversation>},
"config": {}}` to /chat/stream_log for every turn and renders the run log's `final_output`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from langchain_core.tracers.log_stream import RunLogPatch

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import asgi_client, settings_for
from threadline.server.chat import CHAT_COOKIE


@pytest.fixture
async def client(
    openai_stub: OpenAIStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(
        model="openai:gpt-4o-mini", checkpointer="sqlite", sqlite_path=tmp_path / "t.sqlite"
    )
    async with asgi_client(settings) as client:
        yield client


async def page_turn(client: httpx.AsyncClient, conversation: list[dict]) -> tuple[str, int]:
    """One turn as the page sends it; returns the rendered reply and how many chunks streamed."""
    response = await client.post(
        "/chat/stream_log", json={"input": {"messages": conversation}, "config": {}}
    )
    assert response.status_code == 200, response.text
    log = None
    chunks = 0
    for block in response.text.split("\r\n\r\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") != "data":
            continue
        ops = json.loads(lines["data"])["ops"]
        chunks += sum(op["path"] == "/streamed_output/-" for op in ops)
        patch = RunLogPatch(*ops)
        log = patch if log is None else log + patch
    assert log is not None
    return log.state["final_output"], chunks


def human(text: str) -> dict[str, str]:
    return {"type": "human", "content": text}


def ai(text: str) -> dict[str, str]:
    return {"type": "ai", "content": text}


async def test_page_conversation_keeps_one_thread_without_duplicates(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    page = await client.get("/chat/playground/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    thread = client.cookies[CHAT_COOKIE]

    first, chunks = await page_turn(client, [human("Hi, I am Ada.")])
    assert first == "echo: Hi, I am Ada."
    assert chunks > 1  # the reply streams into the page, not in one piece
    second, _ = await page_turn(client, [human("Hi, I am Ada."), ai(first), human("Who am I?")])
    assert second == "echo: Who am I?"
    assert openai_stub.last_request.texts("user") == ["Hi, I am Ada.", "Who am I?"]
    assert openai_stub.last_request.texts("assistant") == ["echo: Hi, I am Ada."]

    stored = (await client.get(f"/threads/{thread}")).json()
    assert [m["content"] for m in stored["messages"]] == [
        "Hi, I am Ada.",
        "echo: Hi, I am Ada.",
        "Who am I?",
        "echo: Who am I?",
    ]


async def test_each_visitor_gets_a_thread_and_a_reload_keeps_it(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    await client.get("/chat/playground/")
    await page_turn(client, [human("visitor one here")])
    reloaded = await client.get("/chat/playground/")
    assert "set-cookie" not in reloaded.headers
    await page_turn(client, [human("still me")])
    assert openai_stub.last_request.texts("user") == ["visitor one here", "still me"]

    transport = client._transport
    async with httpx.AsyncClient(transport=transport, base_url=client.base_url) as stranger:
        await stranger.get("/chat/playground/")
        assert stranger.cookies[CHAT_COOKIE] != client.cookies[CHAT_COOKIE]
        reply, _ = await page_turn(stranger, [human("someone else")])
    assert reply == "echo: someone else"
    assert openai_stub.last_request.texts("user") == ["someone else"]


async def test_a_conversation_not_ending_with_a_human_message_is_422(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/chat/stream_log",
        json={"input": {"messages": [human("hi"), ai("hello")]}, "config": {}},
    )
    assert response.status_code == 422
    assert "human message" in response.json()["detail"]
