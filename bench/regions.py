"""Across zones and regions: what each layout costs per turn, simulated on loopback.

    .venv/bin/python -m bench.regions [--samples 15]

A latency-injecting TCP proxy (`bench.common.latency_proxy`; the kernel here has no netem) sits
between the savers and Postgres / Redis, adding a round-trip time per layout: 1 ms (same zone),
10 ms (same region, other zone), 70 ms (cross-region) to both stores, and a "regional hot tier"
layout with Redis 1 ms away but Postgres 70 ms away (a global durable store, a hot tier in the
reader's region). For each, on a 10-message thread of the one-node bench graph: a turn and a
`get_state`, median ms, for the stock `AsyncPostgresSaver`, threadline's durable Postgres saver
and the tiered saver. Round trips per call are derived from the latency itself:
(ms at the layout - ms on loopback) / RTT, on the layouts where both stores share one RTT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def behind(url: str, rtt_ms: float) -> Iterator[str]:
    """`url` through a proxy adding `rtt_ms` (the URL itself for 0)."""
    if rtt_ms <= 0:
        yield url
        return
    port = urlsplit(url).port
    assert port is not None
    with latency_proxy(port, rtt_ms) as proxied:
        yield url.replace(f":{port}/", f":{proxied}/")


async def measure_layout(services: BenchServices, samples: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        graphs = {
            name: build(await stack.enter_async_context(factory(services)))
            for name, factory in SAVERS.items()
        }
        configs = {name: await prefilled_thread(g, 10) for name, g in graphs.items()}
        for name, g in graphs.items():
            for _ in range(2):
                await g.ainvoke({"messages": []}, configs[name])
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(samples):
            for name, g in graphs.items():  # interleaved: drift hits every saver
                for label, call in (
                    ("turn", g.ainvoke({"messages": []}, configs[name])),
                    ("get_state", g.aget_state(configs[name])),
                ):
                    started = time.perf_counter()
                    await call
                    times.setdefault((name, label), []).append(
                        (time.perf_counter() - started) * 1000
                    )
        for (name, label), values in times.items():
            results.setdefault(name, {})[label] = median(values)
    return results


async def main(samples: int) -> None:
    table: dict[str, dict[str, dict[str, float]]] = {}
    with bench_services() as services:
        for layout, pg_rtt, redis_rtt in LAYOUTS:
            with (
                behind(services.postgres_url, pg_rtt) as pg,
                behind(services.redis_stack_url, redis_rtt) as redis,
            ):
                print(f"measuring {layout}...", flush=True)
                table[layout] = await measure_layout(
                    BenchServices(pg, redis, services.plain_redis_url), samples
                )
    base = table["loopback"]
    print()
    print(f"{'layout':<20}{'saver':<22}{'turn ms':>9}{'get ms':>9}{'turn RTs':>10}{'get RTs':>9}")
    for layout, pg_rtt, redis_rtt in LAYOUTS:
        for name in SAVERS:
            turn, get = table[layout][name]["turn"], table[layout][name]["get_state"]
            same = pg_rtt == redis_rtt and pg_rtt > 0
            trips = (
                f"{(turn - base[name]['turn']) / pg_rtt:>10.1f}"
                f"{(get - base[name]['get_state']) / pg_rtt:>9.1f}"
                if same
                else f"{'':>10}{'':>9}"
            )
            print(f"{layout:<20}{name:<22}{turn:>9.1f}{get:>9.1f}{trips}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    asyncio.run(main(parser.parse_args().samples))
