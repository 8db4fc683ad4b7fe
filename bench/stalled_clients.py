"""Stalled clients: streams nobody reads must not slow anyone else down.

    .venv/bin/python -m bench.stalled_clients [--stalled 90] [--turns 40]

`threadline serve` (tiered, its own process) holds `--stalled` threads of `--turns` long turns
each; a stream of `/agent/stream_events` is opened on every one of them by a client that never
reads (a 4 KB receive window, so the server's writes block). Meanwhile another tenant takes
small turns on a thread of its own, timed; then a turn is taken on one of the stalled threads.
Printed: the other tenant's median and worst turn before and while the streams are stalled,
and how long the stalled thread takes to accept its next turn.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import bench_services, free_port
from bench.server import start_server

FILLER = "words that make each turn of the stalled threads long " * 40


def turn(text: str, thread_id: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


def stall(url: str, thread_id: str) -> socket.socket:
    """Open a stream_events request on `thread_id` and never read the answer."""
    body = httpx.Request("POST", url, json={**turn("stalled", thread_id), "version": "v2"}).content
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /agent/stream_events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def timed_turns(client: httpx.Client, thread_id: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        response = client.post("/agent/invoke", json=turn(f"small {i}", thread_id))
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            print(f"  turn {i}: HTTP {response.status_code} {response.text[:120]}")
    return times


def main(stalled: int, turns: int) -> None:
    with bench_services() as services, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(services, port, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                threads = [f"stalled-{n}" for n in range(stalled)]
                for thread in threads:
                    for i in range(turns):
                        client.post("/agent/invoke", json=turn(f"{i} {FILLER}", thread))
                before = timed_turns(client, "other-tenant", 20)
                sockets = [stall(url, thread) for thread in threads]
                time.sleep(2.0)
                during = timed_turns(client, "other-tenant", 20)
                start = time.perf_counter()
                again = client.post("/agent/invoke", json=turn("after the stall", threads[0]))
                next_turn_ms = (time.perf_counter() - start) * 1000
                for sock in sockets:
                    sock.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{stalled} stalled streams on threads of {turns} turns")
    print(
        f"other tenant, ms per turn: before median {statistics.median(before):.1f} "
        f"max {max(before):.1f}; with the streams stalled median "
        f"{statistics.median(during):.1f} max {max(during):.1f}"
    )
    print(f"next turn on a stalled thread: HTTP {again.status_code} in {next_turn_ms:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=90)
    parser.add_argument("--turns", type=int, default=40)
    args = parser.parse_args()
    main(args.stalled, args.turns)
