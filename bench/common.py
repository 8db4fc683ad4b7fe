"""Shared bench helpers: throwaway services, timing, and a plain-text table."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from threadline.services import PostgresServer, RedisServer, free_port


@dataclass(frozen=True)
class BenchServices:
    postgres_url: str
    redis_stack_url: str
    plain_redis_url: str


@contextmanager
def bench_services(rtt_ms: float = 0.0) -> Iterator[BenchServices]:
    """Postgres, Redis Stack and plain Redis on free loopback ports, removed afterwards.

    With `rtt_ms`, every connection goes through a proxy adding that round-trip time, as
    when the services run on other hosts (the throwaway Postgres runs without fsync).
    """
    dirs = [Path(tempfile.mkdtemp(prefix=f"threadline-bench-{n}-")) for n in ("pg", "rs", "rp")]
    pg = PostgresServer(free_port(), dirs[0])
    stack = RedisServer(free_port(), dirs[1], modules=True)
    plain = RedisServer(free_port(), dirs[2], modules=False)
    started: list[PostgresServer | RedisServer] = []
    try:
        for server in (pg, stack, plain):
            server.start()
            started.append(server)
        if rtt_ms <= 0:
            yield BenchServices(pg.url, stack.url, plain.url)
            return
        with (
            latency_proxy(pg.port, rtt_ms) as pg_port,
            latency_proxy(stack.port, rtt_ms) as stack_port,
            latency_proxy(plain.port, rtt_ms) as plain_port,
        ):
            yield BenchServices(
                pg.url.replace(f":{pg.port}/", f":{pg_port}/"),
                stack.url.replace(f":{stack.port}/", f":{stack_port}/"),
                plain.url.replace(f":{plain.port}/", f":{plain_port}/"),
            )
    finally:
        for server in reversed(started):
            server.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


async def time_calls(fn: Callable[[], Awaitable[object]], n: int, warmup: int = 2) -> list[float]:
    """Milliseconds of `n` sequential awaits of `fn()` after `warmup` untimed ones."""
    for _ in range(warmup):
        await fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pastes into the README as is)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


@contextmanager
def latency_proxy(target_port: int, rtt_ms: float) -> Iterator[int]:
    """A loopback TCP proxy to `target_port` that delays each direction by half of `rtt_ms`.

    It runs in its own process (threads, not asyncio, for sub-millisecond delays), so the
    process under measurement pays nothing for it but the latency.
    """
    port = free_port()
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(
        target=_proxy_main, args=(port, target_port, rtt_ms / 2000, ready), daemon=True
    )
    proc.start()
    if not ready.wait(10):
        proc.kill()
        raise RuntimeError("latency proxy did not start")
    try:
        yield port
    finally:
        proc.kill()
        proc.join(5)


def _proxy_main(port: int, target_port: int, delay: float, ready: object) -> None:
    server = socket.create_server(("127.0.0.1", port), backlog=512)
    ready.set()  # type: ignore[attr-defined]
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pump(client, upstream, delay)
        _pump(upstream, client, delay)


def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Forward `source` to `sink`, each chunk `delay` seconds after it arrived."""
    pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def receive() -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            pending.put((time.monotonic() + delay, data))
            if not data:
                return

    def send() -> None:
        while True:
            due, data = pending.get()
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            try:
                sink.sendall(data)
            except OSError:
                return

    threading.Thread(target=receive, daemon=True).start()
    threading.Thread(target=send, daemon=True).start()
