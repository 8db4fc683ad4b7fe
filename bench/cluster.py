"""The tiered saver on a Redis Cluster beside a single Redis: turn and get_state at H=10/100.

    .venv/bin/python -m bench.cluster [--samples 30]

Same Postgres for both; the cluster is 3 masters + 3 replicas on loopback (the threads' slots
spread over the masters). Medians in ms, the two savers interleaved sample by sample.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from bench.checkpointers import POOL_SIZE, build, prefilled_thread
from bench.common import bench_services, median
from threadline.checkpointers.tiered import TieredSaver
from threadline.dev.services import RedisCluster, free_port


async def main(samples: int) -> None:
    cluster_dir = Path(tempfile.mkdtemp(prefix="threadline-bench-cluster-"))
    cluster = RedisCluster([free_port() for _ in range(6)], cluster_dir)
    cluster.start()
    try:
        with bench_services() as services:
            async with AsyncExitStack() as stack:
                graphs = {}
                for name, url in (
                    ("single Redis", services.plain_redis_url),
                    ("cluster", cluster.url),
                ):
                    saver = await stack.enter_async_context(
                        TieredSaver.from_conn_string(
                            services.postgres_url,
                            url,
                            pool_size=POOL_SIZE,
                            key_prefix=f"bench-{name[0]}",
                        )
                    )
                    graphs[name] = build(saver)
                print(f"{'redis':<14}{'H':>5}{'turn ms':>10}{'get_state ms':>14}")
                rows = []
                for length in (10, 100):
                    configs = {n: await prefilled_thread(g, length) for n, g in graphs.items()}
                    times: dict[tuple[str, str], list[float]] = {}
                    for n, g in graphs.items():
                        for _ in range(2):
                            await g.ainvoke({"messages": []}, configs[n])
                    for _ in range(samples):
                        for n, g in graphs.items():
                            for label in ("turn", "get"):
                                started = time.perf_counter()
                                if label == "turn":
                                    await g.ainvoke({"messages": []}, configs[n])
                                else:
                                    await g.aget_state(configs[n])
                                times.setdefault((n, label), []).append(
                                    (time.perf_counter() - started) * 1000
                                )
                    for n in graphs:
                        rows.append(
                            (n, length, median(times[(n, "turn")]), median(times[(n, "get")]))
                        )
                for n, length, turn, get in rows:
                    print(f"{n:<14}{length:>5}{turn:>10.2f}{get:>14.2f}")
    finally:
        cluster.stop()
        shutil.rmtree(cluster_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    asyncio.run(main(parser.parse_args().samples))
