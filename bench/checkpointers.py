"""Checkpointer benchmark: TieredSaver against the stock savers, in one process, same servers.

    .venv/bin/python -m bench.checkpointers            # full matrix (a few minutes)
    .venv/bin/python -m bench.checkpointers --quick    # fewer samples
    .venv/bin/python -m bench.checkpointers --durability exit   # turns as the server runs them

Graph: one node appending one ~200-character message per turn, no LLM; LangGraph's default
durability (`async`: three saver calls per turn) unless `--durability exit` (one checkpoint per
turn, as `threadline serve` runs turns). Threads are prefilled to H messages with one state
update each, then timed: `ainvoke` per turn and `aget_state` of an active thread — wall medians
in ms, and client CPU per call (`process_time`, this process: what a fleet pays for), in
interleaved batches. Throughput: 32 threads taking turns concurrently, every Postgres saver on a
pool of the same size. Round trips are counted by proxies in front of each service. Ratios are
printed against `InMemorySaver` (stores nothing: the floor) and the stock Postgres saver of the
same run, with the performance targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from bench.common import BenchServices, bench_services, median, render_table
from threadline.checkpointers.durable import DurablePostgresSaver, open_pool
from threadline.checkpointers.tiered import COMMIT_DELAY_SECONDS, TieredSaver

PAYLOAD = ("threadline bench message " * 9)[:200]
LENGTHS = (10, 100, 1000)
POOL_SIZE = 10
CONCURRENT_THREADS = 32
THREADS_PER_SAVER = 10  # threads each saver's timed calls go round
CPU_ROUNDS = 8  # interleaved batches per cell
# Measured in a phase of its own, beside the stock Postgres saver: Redis Stack indexes its
# writes in background threads, which on a small host slow every other saver's client too.
APART = ("AsyncRedisSaver",)
DURABILITY: dict[str, Any] = {}  # ainvoke's durability, when --durability is given

SaverFactory = Callable[[BenchServices], AbstractAsyncContextManager[BaseCheckpointSaver]]


class BenchState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def reply(state: BenchState) -> dict[str, Any]:
    return {"messages": [AIMessage(content=PAYLOAD)]}


def build(saver: BaseCheckpointSaver) -> Any:
    builder = StateGraph(BenchState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


@asynccontextmanager
async def memory_saver(services: BenchServices) -> AsyncIterator[BaseCheckpointSaver]:
    yield InMemorySaver()


@asynccontextmanager
async def stock_postgres(services: BenchServices) -> AsyncIterator[BaseCheckpointSaver]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with open_pool(services.postgres_url, POOL_SIZE) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver


@asynccontextmanager
async def stock_redis(services: BenchServices) -> AsyncIterator[BaseCheckpointSaver]:
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver

    async with AsyncRedisSaver.from_conn_string(services.redis_stack_url) as saver:
        await saver.asetup()
        yield saver


@asynccontextmanager
async def durable(services: BenchServices) -> AsyncIterator[BaseCheckpointSaver]:
    async with DurablePostgresSaver.from_conn_string(
        services.postgres_url, pool_size=POOL_SIZE
    ) as saver:
        yield saver


@asynccontextmanager
async def tiered(services: BenchServices) -> AsyncIterator[BaseCheckpointSaver]:
    async with TieredSaver.from_conn_string(
        services.postgres_url, services.redis_stack_url, pool_size=POOL_SIZE
    ) as saver:
        yield saver


SAVERS: dict[str, SaverFactory] = {
    "InMemorySaver": memory_saver,
    "AsyncPostgresSaver": stock_postgres,
    "AsyncRedisSaver": stock_redis,
    "DurablePostgresSaver": durable,
    "TieredSaver": tiered,
}


async def prefilled_thread(graph: Any, length: int) -> dict[str, Any]:
    config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
    history = [(HumanMessage if i % 2 == 0 else AIMessage)(content=PAYLOAD) for i in range(length)]
    await graph.aupdate_state(config, {"messages": history})
    return config


async def measure(
    graphs: dict[str, Any], samples: int, rounds: int, throughput_of: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Wall medians per call and client CPU per call, the savers taking turns round by round.

    Each round runs a batch of calls on every saver in turn (the order rotating), and a
    saver's CPU per call is the median over rounds of its batch's `process_time` per call: a
    batch is long enough for the clock, and interleaving spreads background load on the
    machine evenly over the savers, so the ratios stay fair when absolute numbers move.
    """
    results: dict[str, dict[str, float]] = {name: {} for name in graphs}
    names = list(graphs)
    for length in LENGTHS:
        batch = THREADS_PER_SAVER * (max(1, samples // 15) if length < 1000 else 1)
        configs = {
            name: [await prefilled_thread(g, length) for _ in range(THREADS_PER_SAVER)]
            for name, g in graphs.items()
        }
        for name, g in graphs.items():
            for config in configs[name]:
                await g.ainvoke({"messages": []}, config, **DURABILITY)
        for label, call in (
            ("turn", lambda g, c: g.ainvoke({"messages": []}, c, **DURABILITY)),
            ("get_state", lambda g, c: g.aget_state(c)),
        ):
            times: dict[str, list[float]] = {name: [] for name in graphs}
            cpu: dict[str, list[float]] = {name: [] for name in graphs}
            for round_ in range(CPU_ROUNDS):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    g, threads = graphs[name], configs[name]
                    start_cpu = time.process_time()
                    for i in range(batch):
                        start = time.perf_counter()
                        await call(g, threads[i % len(threads)])
                        times[name].append((time.perf_counter() - start) * 1000)
                    cpu[name].append((time.process_time() - start_cpu) * 1000 / batch)
            for name in graphs:
                results[name][f"{label} {length}"] = median(times[name])
                results[name][f"{label} cpu {length}"] = median(cpu[name])
        print(f"  measured H={length}", flush=True)
    for name in graphs:
        results[name]["throughput"] = 0.0
    for _ in range(rounds):
        for name, g in graphs.items():
            if throughput_of is None or name in throughput_of:
                rate = await throughput(g, max(3, samples // 3))
                results[name]["throughput"] = max(results[name]["throughput"], rate)
    print("  measured throughput", flush=True)
    return results


async def throughput(graph: Any, turns_per_thread: int) -> float:
    """Turns per second with CONCURRENT_THREADS threads taking turns at once."""
    configs = [await prefilled_thread(graph, 10) for _ in range(CONCURRENT_THREADS)]

    async def converse(config: dict[str, Any]) -> None:
        for _ in range(turns_per_thread):
            await graph.ainvoke({"messages": []}, config, **DURABILITY)

    await asyncio.gather(*(graph.ainvoke({"messages": []}, c, **DURABILITY) for c in configs))
    start = time.perf_counter()
    await asyncio.gather(*(converse(c) for c in configs))
    return CONCURRENT_THREADS * turns_per_thread / (time.perf_counter() - start)


def report(results: dict[str, dict[str, float]]) -> str:
    columns = [f"turn H={h}" for h in LENGTHS] + [f"get_state H={h}" for h in LENGTHS]
    headers = ["saver (median ms)", *columns, f"turns/s x{CONCURRENT_THREADS}"]
    rows = []
    for name, r in results.items():
        cells = [f"{r[c.replace(' H=', ' ')]:.2f}" for c in columns]
        rows.append([name, *cells, f"{r['throughput']:.0f}" if r["throughput"] else "-"])
    lines = [render_table(headers, rows), ""]
    cpu_columns = [f"turn H={h}" for h in LENGTHS]
    anchors = [n for n in ("InMemorySaver", "AsyncPostgresSaver") if n in results]
    cpu_headers = ["client CPU per turn (ms)", *cpu_columns]
    cpu_headers += [f"vs {a} H={h}" for a in anchors for h in LENGTHS[:2]]
    if any("round trips" in r for r in results.values()):
        cpu_headers.append("round trips: turn / get_state / spaced turn (Postgres+Redis)")
    cpu_rows = []
    for name, r in results.items():
        cells = [f"{r[f'turn cpu {h}']:.2f}" for h in LENGTHS]
        cells += [
            f"{r[f'turn cpu {h}'] / results[a][f'turn cpu {h}']:.2f}x"
            for a in anchors
            for h in LENGTHS[:2]
        ]
        if "round trips" in r:
            cells.append(str(r["round trips"]))
        cpu_rows.append([name, *cells])
    lines += [render_table(cpu_headers, cpu_rows), ""]
    lines += [f"{label}: {ratio:.2f}x (target {target}) {verdict}" for label, ratio, target,
              verdict in checks(results)]  # fmt: skip
    return "\n".join(lines)


def checks(results: dict[str, dict[str, float]]) -> list[tuple[str, float, str, str]]:
    """The targets, each as (what, ratio, target, OK or MISSED)."""
    found: list[tuple[str, float, str]] = []
    pg, memory = results.get("AsyncPostgresSaver"), results.get("InMemorySaver")
    for name in ("TieredSaver", "DurablePostgresSaver"):
        if (r := results.get(name)) is None:
            continue
        for h in LENGTHS[:2]:
            cpu = r[f"turn cpu {h}"]
            if pg:
                found.append((f"{name} client CPU per turn H={h} vs AsyncPostgresSaver",
                              cpu / pg[f"turn cpu {h}"], "<= 0.80"))  # fmt: skip
            if memory:
                found.append((f"{name} client CPU per turn H={h} vs InMemorySaver (goal)",
                              cpu / memory[f"turn cpu {h}"], "<= 1.50"))  # fmt: skip
        if pg and r["throughput"] and pg["throughput"]:
            found.append((f"{name} throughput x{CONCURRENT_THREADS} vs AsyncPostgresSaver",
                          r["throughput"] / pg["throughput"], ">= 1.25"))  # fmt: skip
    if (t := results.get("TieredSaver")) and pg:
        found.append(("TieredSaver get_state H=100 vs AsyncPostgresSaver (wall)",
                      t["get_state 100"] / pg["get_state 100"], "<= 0.70"))  # fmt: skip
    if (t := results.get("TieredSaver")) and (rd := results.get("AsyncRedisSaver")):
        found.append(("AsyncRedisSaver turn H=100 / TieredSaver's",
                      rd["turn 100"] / t["turn 100"], ">= 3.00"))  # fmt: skip
    verdicts = []
    for label, ratio, target in found:
        bound = float(target.split()[1])
        ok = ratio <= bound if target.startswith("<=") else ratio >= bound
        verdicts.append((label, ratio, target, "OK" if ok else "MISSED"))
    return verdicts


async def round_trips(
    services: BenchServices, chosen: dict[str, SaverFactory], turns: int = 20
) -> dict[str, str]:
    """Round trips per turn, per get_state and per turn when the thread's next turn comes
    later than the tiered saver's commit delay (H=10), counted by proxies in front of Postgres
    and each Redis: `pg+redis` per call."""
    import multiprocessing
    from urllib.parse import urlsplit

    from bench.common import latency_proxy

    counts = {n: multiprocessing.Value("q", 0) for n in ("pg", "stack", "plain")}
    urls = {"pg": services.postgres_url, "stack": services.redis_stack_url,
            "plain": services.plain_redis_url}  # fmt: skip
    found: dict[str, str] = {}
    with contextlib.ExitStack() as proxies:
        proxied = {}
        for key, url in urls.items():
            port = urlsplit(url).port
            assert port is not None
            new_port = proxies.enter_context(latency_proxy(port, 0.0, counts[key]))
            proxied[key] = url.replace(f":{port}/", f":{new_port}/")
        counted = BenchServices(proxied["pg"], proxied["stack"], proxied["plain"])
        for name, factory in chosen.items():
            async with factory(counted) as saver:
                graph = build(saver)
                config = await prefilled_thread(graph, 10)
                for _ in range(3):
                    await graph.ainvoke({"messages": []}, config, **DURABILITY)
                per_call = []
                for call, spaced in (
                    (lambda g, c: g.ainvoke({"messages": []}, c, **DURABILITY), False),
                    (lambda g, c: g.aget_state(c), False),
                    (lambda g, c: g.ainvoke({"messages": []}, c, **DURABILITY), True),
                ):
                    n = turns // 4 if spaced else turns
                    before = {k: v.value for k, v in counts.items()}
                    for _ in range(n):
                        await call(graph, config)
                        if spaced:  # what a turn costs when the thread's next one is not soon
                            await asyncio.sleep(COMMIT_DELAY_SECONDS + 0.1)
                    pg = (counts["pg"].value - before["pg"]) / n
                    redis = sum(counts[k].value - before[k] for k in ("stack", "plain")) / n
                    per_call.append(f"{pg:.1f}+{redis:.1f}")
                found[name] = " / ".join(per_call)
    return found


async def run(samples: int, rounds: int, only: list[str], rtt_ms: float) -> None:
    chosen = {n: f for n, f in SAVERS.items() if not only or n in only}
    where = f"behind a {rtt_ms:g} ms round-trip proxy" if rtt_ms > 0 else "on loopback"
    durability = DURABILITY.get("durability", "async (LangGraph's default)")
    print(f"Postgres, Redis Stack and plain Redis {where}; pool size {POOL_SIZE}; {durability}")
    together = [n for n in chosen if n not in APART]
    apart = [n for n in chosen if n in APART]
    with bench_services(rtt_ms) as services:
        results = await measure_savers(services, together, samples, rounds)
        beside: dict[str, dict[str, float]] = {}
        anchors = [n for n in ("AsyncPostgresSaver", "TieredSaver") if n in chosen]
        if apart:
            print(f"  then {', '.join(apart)} beside {', '.join(anchors)}", flush=True)
            beside = await measure_savers(services, anchors + apart, samples, rounds, apart)
        for name, trips in (await round_trips(services, chosen)).items():
            for found in (results, beside):
                if name in found:
                    found[name]["round trips"] = trips  # type: ignore[assignment]
    print()
    print(report(results))
    if apart:
        print()
        print(f"{', '.join(apart)}, measured apart beside {', '.join(anchors)}:")
        print(report(beside))


async def measure_savers(
    services: BenchServices,
    names: list[str],
    samples: int,
    rounds: int,
    throughput_of: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    async with AsyncExitStack() as stack:
        graphs = {
            name: build(await stack.enter_async_context(SAVERS[name](services))) for name in names
        }
        return await measure(graphs, samples, rounds, throughput_of)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples per cell")
    parser.add_argument("--samples", type=int, default=30, help="timed calls per cell")
    parser.add_argument("--rounds", type=int, default=2, help="throughput runs (best kept)")
    parser.add_argument("--only", nargs="*", default=[], choices=list(SAVERS), help="savers")
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="round-trip time added to every service connection (services on other hosts)",
    )
    parser.add_argument(
        "--durability",
        choices=["async", "exit"],
        help="LangGraph's durability per turn (default: LangGraph's own, async)",
    )
    args = parser.parse_args()
    if args.durability:
        DURABILITY["durability"] = args.durability
    asyncio.run(run(10 if args.quick else args.samples, args.rounds, args.only, args.rtt_ms))


if __name__ == "__main__":
    main()
