"""Shared bench helpers: throwaway services, timing, and a plain-text table."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import time
from asyncio import StreamReader, StreamWriter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadline.dev.services import (
    DYNAMODB_LOCAL_CREDENTIALS,
    DynamoDBLocal,
    FirestoreEmulator,
    PostgresServer,
    RedisServer,
    free_port,
)

FIRESTORE_PROJECT = "threadline-bench"


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


@dataclass(frozen=True)
class Emulators:
    """Where the local stand-ins for the cloud backends listen (None: not started)."""

    dynamodb_endpoint: str | None = None
    firestore_host: str | None = None


@contextmanager
def emulators(dynamodb: bool = True, firestore: bool = True) -> Iterator[Emulators]:
    """DynamoDB Local and the Firestore emulator, in memory, on free loopback ports, removed
    afterwards; until then the environment their clients read is set (DynamoDB Local's
    dummy credentials and region, `FIRESTORE_EMULATOR_HOST`), and restored on exit."""
    servers: list[DynamoDBLocal | FirestoreEmulator] = []
    env: dict[str, str] = {}
    endpoint = host = None
    try:
        if dynamodb:
            ddb = DynamoDBLocal(free_port(), Path(tempfile.mkdtemp(prefix="threadline-bench-ddb-")))
            servers.append(ddb)
            ddb.start()
            endpoint = ddb.endpoint_url
            env.update(DYNAMODB_LOCAL_CREDENTIALS)
        if firestore:
            fs = FirestoreEmulator(
                free_port(), Path(tempfile.mkdtemp(prefix="threadline-bench-fs-"))
            )
            servers.append(fs)
            fs.start()
            host = fs.host
            env["FIRESTORE_EMULATOR_HOST"] = host
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield Emulators(endpoint, host)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    finally:
        for server in reversed(servers):
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)


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
def latency_proxy(target_port: int, rtt_ms: float, round_trips: Any = None) -> Iterator[int]:
    """A loopback TCP proxy to `target_port` adding `rtt_ms` to every round trip.

    It runs in its own process with its own event loop, delaying server-to-client data (the
    whole round trip's worth, so requests go out at once); asyncio timers round the delay up
    to the next millisecond. With `round_trips` (a `multiprocessing.Value("q")`) it counts
    them per connection as turn-arounds: a reply handed to the client after a request was
    sent is one. Judged when the delayed reply is delivered, not when the server sent it, so
    requests pipelined before the client saw a reply share that reply's count (one wait).
    """
    port = free_port()
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(
        target=_proxy_main,
        args=(port, target_port, rtt_ms / 1000, ready, round_trips),
        daemon=True,
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


def _proxy_main(
    port: int, target_port: int, delay: float, ready: Any, round_trips: Any = None
) -> None:
    async def serve() -> None:
        async def handle(client_r: StreamReader, client_w: StreamWriter) -> None:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", target_port)
            for writer in (client_w, upstream_w):
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            asked = [False]  # the client sent something since it last received a reply

            def request(data: bytes) -> None:
                asked[0] = True

            def reply(data: bytes) -> None:
                if asked[0] and round_trips is not None:
                    with round_trips.get_lock():
                        round_trips.value += 1
                asked[0] = False

            await asyncio.gather(
                _pump(client_r, upstream_w, 0.0, request),
                _pump(upstream_r, client_w, delay, reply),
                return_exceptions=True,
            )

        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


async def _pump(
    source: StreamReader,
    sink: StreamWriter,
    delay: float,
    seen: Callable[[bytes], None] = lambda data: None,
) -> None:
    """Forward `source` to `sink`, each chunk `delay` seconds after it arrived, in order
    (`seen` is told of each chunk as it is forwarded: what the other end sees, and when)."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await pending.get()
            if not data:
                sink.close()
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            seen(data)
            sink.write(data)

    sender = asyncio.ensure_future(send())
    try:
        while data := await source.read(65536):
            pending.put_nowait((loop.time() + delay, data))
    finally:
        pending.put_nowait((0.0, b""))
        await sender
