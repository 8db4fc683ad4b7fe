"""Turn-sized responses and token streaming.

A turn's response carries what the turn added, so its size does not grow with the thread, and
`/agent/stream` sends the reply as the model produces it (the offline model word by word).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import asgi_client, settings_for


def turn(text: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": "t"}},
    }


def data_events(body: str) -> list[Any]:
    events, current = [], None
    for line in body.splitlines():
        if line.startswith("event:"):
            current = line.removeprefix("event:").strip()
        elif line.startswith("data:") and current == "data":
            events.append(json.loads(line.removeprefix("data:")))
    return events


async def test_a_response_does_not_grow_with_the_thread(
    openai_stub: OpenAIStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(
        model="openai:gpt-4o-mini", checkpointer="sqlite", sqlite_path=tmp_path / "t.sqlite"
    )
    sizes: dict[int, int] = {}
    async with asgi_client(settings) as client:
        for n in range(1, 41):
            response = await client.post("/agent/invoke", json=turn(f"message number {n:03d}"))
            assert response.status_code == 200
            sizes[n] = len(response.content)
        last = response.json()["output"]
    print(f"response bytes: turn 2 {sizes[2]}, turn 40 {sizes[40]}")
    assert sizes[40] < 1.1 * sizes[2]
    assert [m["content"] for m in last["messages"]] == [
        "message number 040",
        "echo: message number 040",
    ]
    assert last["thread"]["message_count"] == 80


async def test_the_offline_model_streams_its_reply_word_by_word(tmp_path: Path) -> None:
    settings = settings_for(model="fake", checkpointer="sqlite", sqlite_path=tmp_path / "t.sqlite")
    async with asgi_client(settings) as client:
        streamed = await client.post("/agent/stream", json=turn("tell me about the bees"))
    *tokens, final = data_events(streamed.text)
    reply = final["messages"][-1]["content"]
    pieces = [chunk["messages"][0]["content"] for chunk in tokens]
    print(f"one streamed reply: {len(tokens)} chunks")
    assert len([p for p in pieces if p]) == len(reply.split())  # one chunk per word
    assert "".join(pieces) == reply
    assert [m["type"] for m in final["messages"]] == ["human", "ai"]
