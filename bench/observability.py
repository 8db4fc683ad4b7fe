"""What metrics and tracing cost per turn.

    .venv/bin/python -m bench.observability [--turns 400]

Turns through the server's turn path (memory saver, the offline model, 20 threads), run
interleaved so drift hits both sides:
- tracing off vs on (an SDK tracer provider with a batch processor whose exporter drops the
  spans: the cost of making them, not of shipping them);
- metrics: they cannot be switched off, so their cost is measured directly: the metric work a
  turn does (its outcome and duration, the telemetry histograms, two store-operation timings,
  the model-call timer's callbacks), repeated alone, against the turn's median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from langchain_core.messages import HumanMessage

from threadline.assembly import make_graph
from threadline.checkpointers.memory import MemorySaver
from threadline.observability import tracing
from threadline.observability.metrics import observe_telemetry, timed_op
from threadline.observability.model_timer import ModelTimer
from threadline.server.turns import TurnRunner, counted_turn
from threadline.settings import Settings

TEXT = "Tell me something about the plan for next week, in a few more words than usual. " * 3
TELEMETRY = {"view_tokens": 900, "budget": 8000, "folded_this_turn": 0}


class DroppingExporter:
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


async def timed_turn(runner: TurnRunner, n: int) -> float:
    config: Any = {"configurable": {"thread_id": f"t{n % 20}"}}
    started = time.perf_counter()
    await runner.invoke({"messages": [HumanMessage(TEXT)]}, config)
    return (time.perf_counter() - started) * 1000


async def metric_work() -> None:
    timer = ModelTimer()
    run = uuid.uuid4()
    with counted_turn():
        with timed_op("memory", "all", "get"):
            pass
        await timer.on_chat_model_start({}, [], run_id=run)
        await timer.on_llm_end(None, run_id=run)
        with timed_op("memory", "all", "put"):
            pass
    observe_telemetry(TELEMETRY)


async def main(turns: int) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    settings = Settings(_env_file=None, model="fake", checkpointer="memory")  # type: ignore[call-arg]
    runner = TurnRunner(make_graph(MemorySaver(), settings))
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))  # type: ignore[arg-type]
    times: dict[str, list[float]] = {"off": [], "on": []}
    for n in range(turns):
        tracing.disable_tracing()
        times["off"].append(await timed_turn(runner, n))
        tracing.enable_tracing(provider)
        times["on"].append(await timed_turn(runner, n))
    tracing.disable_tracing()
    off, on = (statistics.median(times[k][turns // 5 :]) for k in ("off", "on"))
    print(f"turn, tracing off: {off:.3f} ms; on: {on:.3f} ms; ratio {on / off:.2f}x")

    rounds = 5000
    started = time.perf_counter()
    for _ in range(rounds):
        await metric_work()
    metrics_ms = (time.perf_counter() - started) * 1000 / rounds
    print(
        f"metric work per turn: {metrics_ms * 1000:.1f} us "
        f"({100 * metrics_ms / off:.1f}% of a turn)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400)
    asyncio.run(main(parser.parse_args().turns))
