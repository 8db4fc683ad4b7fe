"""Soak: does a server's memory level off over many turns on many threads?

    .venv/bin/python -m bench.soak [--turns 20000] [--threads 2000] [--backend postgres]

Runs turns as the server runs them (the served turn path: staged commit, idempotency checks)
with the offline model, round-robin over `--threads` threads, in this process, and samples the
process's resident memory (RSS, from /proc) every 1,000 turns. Prints each sample and the
growth over the last half of the run (the goal: under 5%).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from pathlib import Path

from langchain_core.messages import HumanMessage

from bench.common import bench_services
from threadline.assembly import make_graph
from threadline.checkpointers import open_checkpointer
from threadline.server.turns import TurnRunner
from threadline.settings import Settings

SAMPLE_EVERY = 1000


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def soak(turns: int, threads: int, backend: str) -> list[tuple[int, float]]:
    with bench_services() as services:
        settings = Settings(
            model="fake",
            checkpointer=backend,  # type: ignore[arg-type]
            postgres_url=services.postgres_url,  # type: ignore[arg-type]
            redis_url=services.plain_redis_url,  # type: ignore[arg-type]
        )
        async with open_checkpointer(settings) as saver:
            runner = TurnRunner(make_graph(saver, settings))
            run = uuid.uuid4().hex[:6]
            samples: list[tuple[int, float]] = []
            started = time.perf_counter()
            for n in range(1, turns + 1):
                thread = f"soak-{run}-{n % threads}"
                config = {"configurable": {"thread_id": thread}}
                text = f"turn {n}: a message of ordinary length about bees, hives and honey " * 3
                await runner.invoke({"messages": [HumanMessage(text)]}, config)  # type: ignore[arg-type]
                if n % SAMPLE_EVERY == 0:
                    gc.collect()
                    samples.append((n, rss_mib()))
                    rate = n / (time.perf_counter() - started)
                    print(f"  {n:6d} turns  RSS {samples[-1][1]:7.1f} MiB  ({rate:.0f} turns/s)")
            return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2_000)
    parser.add_argument("--backend", default="postgres", choices=["postgres", "tiered", "sqlite"])
    args = parser.parse_args()
    samples = asyncio.run(soak(args.turns, args.threads, args.backend))
    half = samples[len(samples) // 2 - 1][1] if len(samples) > 1 else samples[0][1]
    last = samples[-1][1]
    print(
        f"RSS at half-way {half:.1f} MiB, at the end {last:.1f} MiB: "
        f"{(last - half) / half * 100:+.1f}% over the last half (goal: under 5%)"
    )


if __name__ == "__main__":
    main()
