"""Shared bench helpers: throwaway services, timing, and a plain-text table."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from threadline.services import PostgresServer, RedisServer, free_port


@dataclass(frozen=True)
class BenchServices:
    postgres_url: str
    redis_stack_url: str
    plain_redis_url: str


@contextmanager
def bench_services(durable_commits: bool = True) -> Iterator[BenchServices]:
    """Postgres, Redis Stack and plain Redis on free loopback ports, removed afterwards.

    The throwaway Postgres skips fsync for test speed; `durable_commits` turns Postgres'
    defaults (fsync, synchronous commit) back on, as a production database runs.
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
        if durable_commits:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET fsync = on")
                conn.execute("ALTER SYSTEM SET synchronous_commit = on")
                conn.execute("SELECT pg_reload_conf()")
        yield BenchServices(pg.url, stack.url, plain.url)
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
