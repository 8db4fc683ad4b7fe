"""Listing threads: does the first and the last page cost the same with 10,000 threads?

    .venv/bin/python -m bench.thread_list [--threads 10000] [--page 50]

Stores `--threads` thread records of one tenant (and as many of another, so the index must
pick one tenant) through the saver's own checkpoint write, then pages through one tenant's
listing with the keyset cursor and prints the time of the first and the last page (median
of 20 reads each) and their ratio: an index gives about 1x, a scan grows with the page number.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from langgraph.checkpoint.base import empty_checkpoint

from bench.common import bench_services
from threadline.checkpointers.durable import DurablePostgresSaver
from threadline.checkpointers.records import RecordQuery, ThreadRecord, record_metadata


async def fill(saver: DurablePostgresSaver, tenant: str, threads: int) -> None:
    for n in range(threads):
        key = f"{tenant}/thread-{n:05d}"
        record = ThreadRecord(key, tenant, f"thread-{n:05d}", "u", f"title {n}", n, n, 2)
        config = {"configurable": {"thread_id": key, "checkpoint_ns": ""}}
        await saver.aput(config, empty_checkpoint(), record_metadata(record), {})  # type: ignore[arg-type]


async def timed_page(
    saver: DurablePostgresSaver, page: int, after: tuple[float, str] | None
) -> float:
    times = []
    for _ in range(20):
        started = time.perf_counter()
        await saver.alist_thread_records(RecordQuery("a", None, page + 1, after))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main(threads: int, page: int) -> None:
    with bench_services() as services:
        async with DurablePostgresSaver.from_conn_string(services.postgres_url) as saver:
            started = time.perf_counter()
            await asyncio.gather(fill(saver, "a", threads), fill(saver, "b", threads))
            print(f"stored {2 * threads} records in {time.perf_counter() - started:.1f} s")
            cursors: list[tuple[float, str] | None] = [None]
            while True:
                query = RecordQuery("a", None, page + 1, cursors[-1])
                records = await saver.alist_thread_records(query)
                if len(records) <= page:
                    break
                cursors.append(records[page - 1].position)
            async with saver.cursor() as cur:  # what autovacuum does after a bulk load
                await cur.execute("ANALYZE threadline_threads")
            await timed_page(saver, page, cursors[0])  # warm both statements up
            await timed_page(saver, page, cursors[-1])
            first = await timed_page(saver, page, cursors[0])
            last = await timed_page(saver, page, cursors[-1])
            print(f"{len(cursors)} pages of {page}")
            print(f"first page {first:.2f} ms, last page {last:.2f} ms: {last / first:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.threads, args.page))
