"""Idle, half-sent and trickled connections are closed after bounded timeouts (hardening found
from outside: 1,500 idle sockets and 100 trickling bodies stayed open past 30 s)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest


@pytest.fixture
def server(server_process: Any, tmp_path: Any) -> Any:
    return server_process(
        {
            "THREADLINE_MODEL": "fake",
            "THREADLINE_SQLITE_PATH": str(tmp_path / "t.sqlite"),
            "THREADLINE_HEADER_TIMEOUT_SECONDS": "1",
            "THREADLINE_BODY_TIMEOUT_SECONDS": "2",
        }
    )


def connect(server: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it sent."""
    started, received = time.monotonic(), b""
    while time.monotonic() - started < seconds:
        chunk = sock.recv(65536)
        if not chunk:
            return True, received
        received += chunk
    return False, received


def test_a_connection_that_never_sends_a_request_is_closed(server: Any) -> None:
    sockets = [connect(server) for _ in range(20)]
    for sock in sockets:
        assert closed_within(sock, 5)[0]


def test_trickled_headers_are_cut_off(server: Any) -> None:
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    for _ in range(6):
        time.sleep(0.4)
        try:
            sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
    assert closed_within(sock, 5)[0]


def test_a_trickled_body_gets_408(server: Any) -> None:
    sock = connect(server)
    sock.sendall(
        b"POST /agent/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 400\r\n\r\n{"
    )
    started = time.monotonic()
    for _ in range(20):
        time.sleep(0.25)
        try:
            sock.sendall(b" ")
        except OSError:
            break
    _, received = closed_within(sock, 10)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert time.monotonic() - started < 8


def test_an_idle_keep_alive_connection_is_closed(server: Any) -> None:
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert closed_within(sock, 8)[0]
