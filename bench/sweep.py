"""Sweeping 10,000 expired threads: how long, and what it leaves behind, per strategy.

    .venv/bin/python -m bench.sweep [--threads 10000] [--turns 3] [--strategy all]

For each strategy, a fresh Postgres database gets `--threads` threads of `--turns` turns (the
offline model, stored through the server's turn path), all idle past a 1 h TTL; one sweep
(batches of 1,000, as the CLI runs it) then deletes them, cuts each to its latest checkpoint,
or archives them to a local directory. Printed: the sweep's time and threads per second, rows
per table and bytes on disk (after VACUUM FULL) before and after, and the archive's bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.messages import HumanMessage

from bench.common import bench_services
from threadline.assembly import open_keeper
from threadline.retention import Sweeper
from threadline.server.turns import TurnRunner
from threadline.settings import Settings

TABLES = (
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "threadline_threads",
    "threadline_turn_receipts",
)
CONCURRENCY = 32


def fresh_database(server_url: str) -> str:
    name = f"sweep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def table_stats(url: str) -> dict[str, tuple[int, int]]:
    """Rows and bytes on disk per table, after VACUUM FULL (so deleted rows are not counted)."""
    with psycopg.connect(url, autocommit=True) as conn:
        stats = {}
        for table in TABLES:
            conn.execute(f"VACUUM FULL {table}")
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            size = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]  # type: ignore[index]
            stats[table] = (rows, size)
        return stats


async def populate(settings: Settings, threads: int, turns: int) -> None:
    async with open_keeper(settings) as (keeper, _):
        runner = TurnRunner(keeper.graph, keeper=keeper)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            async with gate:
                for t in range(turns):
                    message = HumanMessage(f"thread {n}, turn {t}: " + "some words to store " * 8)
                    config: Any = {"configurable": {"thread_id": f"thread-{n:05d}"}}
                    await runner.invoke({"messages": [message]}, config)

        await asyncio.gather(*(one(n) for n in range(threads)))


async def sweep(settings: Settings) -> tuple[float, Any]:
    async with open_keeper(settings) as (keeper, locks):
        sweeper = Sweeper(keeper, locks, settings.ttl_strategy, settings.thread_ttl_seconds, 1000)
        started = time.perf_counter()
        report = await sweeper.sweep(now=time.time() + 2 * 3600, max_batches=None)
        return time.perf_counter() - started, report


def print_stats(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> None:
    print(
        f"  {'table':<26}{'rows before':>12}{'rows after':>12}{'KiB before':>12}{'KiB after':>12}"
    )
    for table in TABLES:
        (rows_b, bytes_b), (rows_a, bytes_a) = before[table], after[table]
        print(f"  {table:<26}{rows_b:>12}{rows_a:>12}{bytes_b // 1024:>12}{bytes_a // 1024:>12}")
    total_b = sum(b for _, b in before.values()) // 1024
    total_a = sum(b for _, b in after.values()) // 1024
    print(f"  {'total':<26}{'':>12}{'':>12}{total_b:>12}{total_a:>12}")


async def main(threads: int, turns: int, strategies: list[str]) -> None:
    with bench_services() as services:
        for strategy in strategies:
            archive = Path(tempfile.mkdtemp(prefix="threadline-bench-archive-"))
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                model="fake",
                checkpointer="postgres",
                postgres_url=fresh_database(services.postgres_url),  # type: ignore[arg-type]
                thread_ttl="1h",
                ttl_strategy=strategy,  # type: ignore[arg-type]
                archive_url=f"file://{archive}",
                audit_log_path=archive.parent / f"{archive.name}-audit.jsonl",
            )
            started = time.perf_counter()
            await populate(settings, threads, turns)
            print(
                f"\n{strategy}: stored {threads} threads x {turns} turns "
                f"in {time.perf_counter() - started:.0f} s"
            )
            url = settings.postgres_url.get_secret_value()  # type: ignore[union-attr]
            before = table_stats(url)
            seconds, report = await sweep(settings)
            after = table_stats(url)
            print(f"  sweep: {report.summary()}")
            print(f"  {seconds:.1f} s, {report.handled / seconds:.0f} threads/s")
            print_stats(before, after)
            archived = sum(p.stat().st_size for p in archive.iterdir())
            if archived:
                print(f"  archive: {len(list(archive.iterdir()))} objects, {archived // 1024} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument(
        "--strategy", default="all", choices=["all", "delete", "keep_latest", "archive"]
    )
    args = parser.parse_args()
    chosen = ["delete", "keep_latest", "archive"] if args.strategy == "all" else [args.strategy]
    asyncio.run(main(args.threads, args.turns, chosen))
