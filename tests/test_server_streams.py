"""A stream never shows a reply the thread does not hold: the final state is sent after the
turn is stored, and a turn that could not be stored ends its stream with an error event."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.server import asgi_client, settings_for
from threadline.checkpointers.durable import CheckpointStoreUnavailable
from threadline.observability.logs import RequestIdFilter
from threadline.server.staged import StagedSaver


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(settings_for(model="fake", checkpointer="memory")) as client:
        yield client


def turn(text: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": "t"}},
    }


async def test_a_stream_whose_turn_was_not_stored_ends_with_an_error_and_no_reply(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(self: StagedSaver, *args: Any) -> None:
        raise CheckpointStoreUnavailable("Postgres unavailable, nothing was stored")

    monkeypatch.setattr(StagedSaver, "commit", refuse)
    streamed = await client.post("/agent/stream", json=turn("unlucky"))
    assert "You said" not in streamed.text, "a reply the thread does not hold was sent"
    events = [line for line in streamed.text.splitlines() if line.startswith("event:")]
    assert events[-1] == "event: error", streamed.text
    assert (await client.get("/threads/t")).status_code == 404

    monkeypatch.undo()
    stored = await client.post("/agent/stream", json=turn("lucky"))
    assert "You said" in stored.text
    assert (await client.get("/threads/t")).status_code == 200


async def test_stream_events_of_a_turn_that_was_not_stored_end_with_an_error(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(self: StagedSaver, *args: Any) -> None:
        raise CheckpointStoreUnavailable("Postgres unavailable, nothing was stored")

    monkeypatch.setattr(StagedSaver, "commit", refuse)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING, logger="threadline.server.streams"):
        streamed = await client.post(
            "/agent/stream_events",
            json={**turn("unlucky"), "version": "v2"},
            headers={"X-Request-Id": "s-9"},
        )
    events = [line for line in streamed.text.splitlines() if line.startswith("event:")]
    assert events[-1] == "event: error", streamed.text[-500:]
    warned = [r for r in caplog.records if r.name == "threadline.server.streams"]
    assert [getattr(r, "request_id", None) for r in warned] == ["s-9"], "logged with its request"
