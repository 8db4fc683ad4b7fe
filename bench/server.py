"""Server benchmark: turns over HTTP against the same turns in-process, tiered store.

    .venv/bin/python -m bench.server            # 1, 16 and 64 clients
    .venv/bin/python -m bench.server --quick    # fewer turns per client

Each client owns one thread and takes turns back to back (after two untimed warm-up turns).
Three ways to run the same workload, all with the offline model on the tiered store:

- http: `threadline serve` (one uvicorn worker, its own process), httpx clients over loopback,
  POST /agent/invoke; the full server path: auth, limits, Postgres thread lock, all-or-nothing
  turn, JSON.
- turn path: the same turns in this process without HTTP: the server's turn machinery (Postgres
  thread lock, all-or-nothing turn with one checkpoint, idempotency lookup). The baseline.
- graph: plain `graph.ainvoke` on the tiered saver in this process, LangGraph's default
  durability (a checkpoint per step: three per turn), no lock: what a library caller gets.

Printed: turns/s, p50 and p99 latency per turn, each row's throughput as a ratio of the
in-process turn path with the same number of clients, and CPU per turn of the process doing the
work: the server's, read from /proc (http), or this process's (in-process rows), with the HTTP
row's ratio to the turn path's. On a small machine the HTTP clients
share the CPU with the server process, which weighs on the HTTP rows at high concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import HumanMessage

from bench.common import BenchServices, bench_services, render_table
from threadline.assembly import make_graph
from threadline.checkpointers import open_checkpointer
from threadline.dev.services import free_port
from threadline.locks import open_turn_locks
from threadline.server.turns import TurnRunner
from threadline.settings import Settings

CLIENTS = (1, 16, 64)
WARMUP_TURNS = 2
MIN_TURNS = 160  # per row: ~1 s of server CPU, so /proc's 10 ms ticks stay under 1%
MESSAGE = ("threadline server bench " * 9)[:200]
THREADLINE = str(Path(sys.executable).parent / "threadline")

Turn = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Result:
    mode: str
    clients: int
    turns: int
    seconds: float
    latencies_ms: list[float]
    cpu_seconds: float = 0.0

    @property
    def cpu_ms_per_turn(self) -> float:
        return 1000 * self.cpu_seconds / self.turns

    @property
    def turns_per_second(self) -> float:
        return self.turns / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def turns_for(clients: int, turns: int) -> int:
    """Timed turns per client: at least MIN_TURNS in all, since the server's CPU is read from
    /proc in 10 ms ticks."""
    return max(turns, -(-MIN_TURNS // clients))


def store_env(services: BenchServices) -> dict[str, str]:
    return {
        "THREADLINE_MODEL": "fake",
        "THREADLINE_CHECKPOINTER": "tiered",
        "THREADLINE_POSTGRES_URL": services.postgres_url,
        "THREADLINE_REDIS_URL": services.plain_redis_url,
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_clients(
    mode: str, clients: int, turns: int, turn: Turn, cpu: Callable[[], float] = time.process_time
) -> Result:
    """`clients` coroutines, one thread each, `turns` timed turns each after the warm-up;
    `cpu()` is read around the timed turns."""
    threads = [f"bench-{mode}-{clients}-{n}-{uuid.uuid4().hex[:6]}" for n in range(clients)]
    await asyncio.gather(*(turn(t) for t in threads for _ in range(WARMUP_TURNS)))
    latencies: list[float] = []

    async def client(thread: str) -> None:
        for _ in range(turns):
            start = time.perf_counter()
            await turn(thread)
            latencies.append((time.perf_counter() - start) * 1000)

    start, start_cpu = time.perf_counter(), cpu()
    await asyncio.gather(*(client(t) for t in threads))
    seconds = time.perf_counter() - start
    return Result(mode, clients, clients * turns, seconds, latencies, cpu() - start_cpu)


def start_server(services: BenchServices, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [THREADLINE, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**env, **store_env(services)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"threadline serve did not become ready; see {log_path}")


async def bench_http(services: BenchServices, turns: int, log_path: Path) -> list[Result]:
    port = free_port()
    proc = start_server(services, port, log_path)
    try:
        limits = httpx.Limits(max_connections=max(CLIENTS), max_keepalive_connections=max(CLIENTS))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
        ) as http:

            async def turn(thread: str) -> None:
                response = await http.post(
                    "/agent/invoke",
                    json={
                        "input": {"messages": [{"type": "human", "content": MESSAGE}]},
                        "config": {"configurable": {"thread_id": thread}},
                    },
                )
                response.raise_for_status()

            server_cpu = lambda: process_cpu_seconds(proc.pid)  # noqa: E731
            return [
                await run_clients("http", n, turns_for(n, turns), turn, server_cpu) for n in CLIENTS
            ]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


async def bench_in_process(services: BenchServices, turns: int) -> list[Result]:
    values = {k.removeprefix("THREADLINE_").lower(): v for k, v in store_env(services).items()}
    settings = Settings(**values)  # type: ignore[arg-type]
    results: list[Result] = []
    async with AsyncExitStack() as stack:
        saver = await stack.enter_async_context(open_checkpointer(settings))
        locks = await stack.enter_async_context(open_turn_locks(settings))
        graph = make_graph(saver, settings)
        runner = TurnRunner(graph)

        def config(thread: str) -> Any:
            return {"configurable": {"thread_id": thread}}

        async def graph_turn(thread: str) -> None:
            await graph.ainvoke({"messages": [HumanMessage(MESSAGE)]}, config(thread))

        async def turn_path(thread: str) -> None:
            async with locks.hold([thread], settings.turn_lock_timeout_seconds):
                await runner.invoke({"messages": [HumanMessage(MESSAGE)]}, config(thread))

        for n in CLIENTS:
            results.append(await run_clients("graph", n, turns_for(n, turns), graph_turn))
            results.append(await run_clients("turn path", n, turns_for(n, turns), turn_path))
    return results


def report(results: list[Result]) -> str:
    baseline = {r.clients: r.turns_per_second for r in results if r.mode == "turn path"}
    cpu_base = {r.clients: r.cpu_ms_per_turn for r in results if r.mode == "turn path"}
    rows = []
    for r in sorted(
        results, key=lambda r: (r.clients, ["graph", "turn path", "http"].index(r.mode))
    ):
        rows.append(
            [
                str(r.clients),
                r.mode,
                str(r.turns),
                f"{r.turns_per_second:.0f}",
                f"{r.percentile(0.5):.1f}",
                f"{r.percentile(0.99):.1f}",
                f"{r.turns_per_second / baseline[r.clients]:.2f}x",
                f"{r.cpu_ms_per_turn:.2f}",
                f"{r.cpu_ms_per_turn / cpu_base[r.clients]:.2f}x",
            ]
        )
    headers = [
        "clients", "path", "turns", "turns/s", "p50 ms", "p99 ms", "vs turn path",
        "CPU ms/turn", "CPU vs turn path",
    ]  # fmt: skip
    return render_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns per client")
    args = parser.parse_args()
    turns = 5 if args.quick else 20
    log_path = Path(".threadline/bench-server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"{turns} timed turns per client (at least {MIN_TURNS} per row) after {WARMUP_TURNS} "
        "warm-up turns; tiered store"
    )
    with bench_services() as services:
        results = asyncio.run(bench_in_process(services, turns))
        results += asyncio.run(bench_http(services, turns, log_path))
    print(report(results))
    mean = statistics.mean(r.turns_per_second for r in results if r.mode == "http")
    print(f"mean HTTP throughput over {CLIENTS}: {mean:.0f} turns/s")


if __name__ == "__main__":
    main()
