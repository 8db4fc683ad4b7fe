"""A client that opens a stream and never reads holds neither its thread nor a connection past
its turn, and slows no one else (hardening found from outside: its thread stayed busy (409)
for 45 s and more, and 90 such streams starved other tenants)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.server import live_server, settings_for

TURNS_BEFORE = 160  # a long thread: its stream_events output is far beyond the socket buffers


def turn(text: str, thread_id: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


@pytest.fixture
def server(postgres_db_url: str) -> Iterator[str]:
    settings = settings_for(
        model="fake",
        checkpointer="postgres",
        postgres_url=postgres_db_url,
        turn_lock_timeout_seconds=3.0,
    )
    with live_server(settings) as url:
        yield url


def stalled_stream(url: str, body: bytes) -> socket.socket:
    """POST a stream request and never read the response."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /agent/stream_events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_a_stream_nobody_reads_lets_its_thread_go_when_the_turn_is_stored(server: str) -> None:
    filler = "words to make the thread long enough to fill socket buffers " * 40
    with httpx.Client(base_url=server, timeout=30) as client:
        for n in range(TURNS_BEFORE):
            assert client.post("/agent/invoke", json=turn(f"{n} {filler}", "long")).is_success
        body = httpx.Request("POST", "/", json={**turn("stalled", "long"), "version": "v2"}).content
        size = len(
            client.post(
                "/agent/stream_events", json={**turn("measure", "long"), "version": "v2"}
            ).content
        )
        assert size > 4_000_000, f"the stream ({size} bytes) would fit in socket buffers"
        stalled = [stalled_stream(server, body) for _ in range(5)]
        try:
            time.sleep(1.0)
            started = time.monotonic()
            # Another thread is not slowed down by the stalled streams.
            assert client.post("/agent/invoke", json=turn("hello", "other")).is_success
            # The stalled thread itself takes the next turn once the stalled turns are stored.
            after = client.post("/agent/invoke", json=turn("after the stall", "long"))
            assert after.status_code == 200, after.text
            assert time.monotonic() - started < 3.0
            humans = [
                m["content"]
                for m in client.get("/threads/long").json()["messages"]
                if m["type"] == "human"
            ]
            assert humans.count("stalled") == 5  # every accepted turn was stored, once
            assert humans[-1] == "after the stall"
        finally:
            for sock in stalled:
                sock.close()


@pytest.fixture
def stub_server(openai_stub: Any, postgres_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer="postgres",
        postgres_url=postgres_db_url,
        turn_lock_timeout_seconds=10.0,
    )
    with live_server(settings) as url:
        yield url


def test_a_client_that_leaves_mid_turn_keeps_its_thread_busy_until_the_turn_is_stored(
    stub_server: str, openai_stub: Any
) -> None:
    """The turn goes on when its client leaves; the next turn on the thread waits for it
    instead of running beside it (which would fork the thread)."""
    openai_stub.delay_when(lambda request: request.last_user_text == "slow one", 2.0)
    with httpx.Client(base_url=stub_server, timeout=30) as client:
        with client.stream("POST", "/agent/stream", json=turn("slow one", "leaving")) as stream:
            next(stream.iter_bytes())  # the stream has started; now leave
        after = client.post("/agent/invoke", json=turn("next one", "leaving"))
        assert after.status_code == 200, after.text
        messages = client.get("/threads/leaving").json()["messages"]
    assert [m["content"] for m in messages] == [
        "slow one",
        "echo: slow one",
        "next one",
        "echo: next one",
    ]
