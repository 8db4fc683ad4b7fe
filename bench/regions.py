"""Across zones and regions: what each layout costs per turn, simulated on loopback.

    .venv/bin/python -m bench.regions [--samples 15]

A latency-injecting TCP proxy (`bench.common.latency_proxy`; the kernel here has no netem) sits
between the savers and Postgres / Redis, adding a round-trip time per layout: 1 ms (same zone),
10 ms (same region, other zone), 70 ms (cross-region) to both stores, and a "regional hot tier"
layout with Redis 1 ms away but Postgres 70 ms away (a global durable store, a hot tier in the
reader's region). For each, on a 10-message thread of the one-node bench graph: a turn and a
`get_state`, median ms, for the stock `AsyncPostgresSaver`, threadline's durable Postgres saver
and the tiered saver. Round trips are counted by the proxies, not inferred from the times: each
saver has its own pair, so the counts are its alone, printed as Postgres+Redis per call (a
reply after a request on one connection is one; exchanges on two connections at once count
twice though they cost one wait). The loopback row runs without proxies: it is the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.checkpointers import build, durable, prefilled_thread, stock_postgres, tiered
from bench.common import BenchServices, bench_services, latency_proxy, median

LAYOUTS = [  # name, Postgres RTT, Redis RTT (ms)
    ("loopback", 0.0, 0.0),
    ("same zone", 1.0, 1.0),
    ("other zone", 10.0, 10.0),
    ("cross-region", 70.0, 70.0),
    ("regional hot tier", 70.0, 1.0),
]
SAVERS = {
    "AsyncPostgresSaver": stock_postgres,
    "DurablePostgresSaver": durable,
    "TieredSaver": tiered,
}
CALLS = ("turn", "get_state")


@dataclass
class Counters:
    """Round trips so far through one saver's Postgres and Redis proxies (shared with the
    proxy processes, which add to them)."""

    pg: Any = field(default_factory=lambda: multiprocessing.Value("q", 0))
    redis: Any = field(default_factory=lambda: multiprocessing.Value("q", 0))

    def now(self) -> tuple[int, int]:
        return self.pg.value, self.redis.value


@dataclass
class Cell:
    """One saver's figures on one layout: median ms and mean counted round trips per call."""

    ms: dict[str, float]
    trips: dict[str, tuple[float, float]] | None  # (Postgres, Redis); None: not proxied


@contextlib.contextmanager
def behind(url: str, rtt_ms: float, counter: Any = None) -> Iterator[str]:
    """`url` through a proxy adding `rtt_ms` and counting round trips into `counter` (the URL
    itself for 0: the loopback baseline has no proxy's overhead)."""
    if rtt_ms <= 0:
        yield url
        return
    port = urlsplit(url).port
    assert port is not None
    with latency_proxy(port, rtt_ms, counter) as proxied:
        yield url.replace(f":{port}/", f":{proxied}/")


async def measure_layout(
    services: dict[str, BenchServices], counters: dict[str, Counters] | None, samples: int
) -> dict[str, Cell]:
    """Every saver on its own services (its own proxies), samples interleaved across savers so
    that drift hits all of them."""
    async with contextlib.AsyncExitStack() as stack:
        graphs = {
            name: build(await stack.enter_async_context(factory(services[name])))
            for name, factory in SAVERS.items()
        }
        configs = {name: await prefilled_thread(g, 10) for name, g in graphs.items()}
        for name, g in graphs.items():
            for _ in range(2):
                await g.ainvoke({"messages": []}, configs[name])
        times: dict[tuple[str, str], list[float]] = {}
        trips: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for _ in range(samples):
            for name, g in graphs.items():
                for label in CALLS:
                    call = (
                        g.ainvoke({"messages": []}, configs[name])
                        if label == "turn"
                        else g.aget_state(configs[name])
                    )
                    seen = counters[name].now() if counters else (0, 0)
                    started = time.perf_counter()
                    await call
                    elapsed = (time.perf_counter() - started) * 1000
                    times.setdefault((name, label), []).append(elapsed)
                    if counters:
                        pg, redis = counters[name].now()
                        trips.setdefault((name, label), []).append((pg - seen[0], redis - seen[1]))
    cells = {}
    for name in SAVERS:
        counted = None
        if counters:
            counted = {
                label: (
                    sum(p for p, _ in trips[(name, label)]) / samples,
                    sum(r for _, r in trips[(name, label)]) / samples,
                )
                for label in CALLS
            }
        cells[name] = Cell({label: median(times[(name, label)]) for label in CALLS}, counted)
    return cells


def render_trips(trips: tuple[float, float] | None) -> str:
    if trips is None:
        return ""
    return f"{trips[0]:.1f}+{trips[1]:.1f}"


async def main(samples: int) -> None:
    table: dict[str, dict[str, Cell]] = {}
    with bench_services() as services:
        for layout, pg_rtt, redis_rtt in LAYOUTS:
            counters = {name: Counters() for name in SAVERS} if pg_rtt > 0 else None
            with contextlib.ExitStack() as proxies:
                per_saver = {}
                for name in SAVERS:
                    counted = counters[name] if counters else None
                    pg = proxies.enter_context(
                        behind(services.postgres_url, pg_rtt, counted.pg if counted else None)
                    )
                    redis_counter = counted.redis if counted else None
                    redis = proxies.enter_context(
                        behind(services.redis_stack_url, redis_rtt, redis_counter)
                    )
                    per_saver[name] = BenchServices(pg, redis, services.plain_redis_url)
                print(f"measuring {layout}...", flush=True)
                table[layout] = await measure_layout(per_saver, counters, samples)
    print()
    print(f"median of {samples}; round trips counted per call as Postgres+Redis")
    print(f"{'layout':<20}{'saver':<22}{'turn ms':>9}{'get ms':>9}{'turn RTs':>10}{'get RTs':>9}")
    for layout, _, _ in LAYOUTS:
        for name in SAVERS:
            cell = table[layout][name]
            trips = cell.trips or {}
            print(
                f"{layout:<20}{name:<22}{cell.ms['turn']:>9.1f}{cell.ms['get_state']:>9.1f}"
                f"{render_trips(trips.get('turn')):>10}{render_trips(trips.get('get_state')):>9}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15, help="timed calls per cell")
    asyncio.run(main(parser.parse_args().samples))
