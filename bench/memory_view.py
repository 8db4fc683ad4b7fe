"""Memory-policy benchmark: what deciding the model's view costs per model call.

    .venv/bin/python -m bench.memory_view            # H = 100, 1000, 10000 messages
    .venv/bin/python -m bench.memory_view --quick    # fewer samples

Transcripts of H messages (~200 characters each, a tool round every fifth turn), an
8000-token budget, counted with tiktoken. Timed, median ms per model call, with the token
cache warm as in a running server (one counter serves every turn):
- threadline `trim`: `build_view` on the whole transcript (the newest turns that fit);
- threadline `summarize`: `plan_fold` + `build_view` on a thread whose unsummarised part
  fills 70% of the budget (between folds, under the 90% trigger: no summary call);
- langchain-core `trim_messages(strategy="last", start_on="human")`, the usual anchor, given
  the same cached counter, and given `ChatOpenAI.get_num_tokens_from_messages` as most code
  does. Ratios are against the cached-counter anchor.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)
from langchain_openai import ChatOpenAI

from bench.common import median, render_table
from threadline.graph.context import MemoryPolicy
from threadline.graph.memory import build_view, plan_fold
from threadline.graph.tokens import install_offline_encodings, make_token_counter

LENGTHS = (100, 1000, 10_000)
BUDGET = 8000
TEXT = ("threadline memory bench sentence " * 8)[:200]


def transcript(length: int) -> list[BaseMessage]:
    messages: list[BaseMessage] = []
    turn = 0
    while len(messages) < length:
        turn += 1
        messages.append(HumanMessage(f"{turn} {TEXT}", id=f"h{turn}"))
        if turn % 5 == 0:
            call = {"name": "lookup", "args": {"q": str(turn)}, "id": f"c{turn}"}
            messages.append(AIMessage("", tool_calls=[call], id=f"a{turn}-call"))
            messages.append(ToolMessage(TEXT, tool_call_id=f"c{turn}", id=f"t{turn}"))
        messages.append(AIMessage(f"{turn} {TEXT}", id=f"a{turn}"))
    return messages[:length]


def timed(call: Callable[[], object], samples: int) -> float:
    call()  # warm the token cache, as every turn after the first finds it
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1000)
    return median(durations)


def measure(length: int, model: ChatOpenAI, samples: int) -> list[str]:
    counter = make_token_counter("gpt-4o-mini")
    trim = MemoryPolicy(
        system_prompt="Be brief.", max_context_tokens=BUDGET, memory_strategy="trim"
    )
    summarize = MemoryPolicy(system_prompt="Be brief.", max_context_tokens=BUDGET)
    messages = transcript(length)
    summary = "summary " * 100
    # A summarize thread between folds: its unsummarised tail fills 70% of the budget.
    tail_budget = MemoryPolicy(
        system_prompt="Be brief.", max_context_tokens=int(BUDGET * 0.7), memory_strategy="trim"
    )
    tail_start = len(messages) - build_view(messages, "", 0, tail_budget, counter).shown
    with_system = [SystemMessage("Be brief."), *messages]

    def ours_trim() -> object:
        return build_view(messages, "", 0, trim, counter)

    def ours_summarize() -> object:
        plan_fold(messages, summary, tail_start, summarize, counter)
        return build_view(messages, summary, tail_start, summarize, counter)

    def anchor(token_counter: Callable[[list[BaseMessage]], int]) -> Callable[[], object]:
        return lambda: trim_messages(
            with_system,
            max_tokens=BUDGET,
            token_counter=token_counter,
            strategy="last",
            start_on="human",
            include_system=True,
        )

    cached = timed(anchor(counter.count), samples)
    uncached = timed(anchor(model.get_num_tokens_from_messages), max(samples // 4, 3))
    trim_ms = timed(ours_trim, samples)
    summarize_ms = timed(ours_summarize, samples)
    return [
        str(length),
        f"{trim_ms:.2f}",
        f"{summarize_ms:.2f}",
        f"{cached:.2f}",
        f"{uncached:.1f}",
        f"{trim_ms / cached:.2f}x",
        f"{summarize_ms / cached:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    install_offline_encodings()
    model = ChatOpenAI(model="gpt-4o-mini", api_key="unused")
    rows = [measure(length, model, 5 if args.quick else 21) for length in LENGTHS]
    headers = [
        "H",
        "threadline trim ms",
        "threadline summarize ms",
        "trim_messages ms",
        "trim_messages + get_num_tokens ms",
        "trim ratio",
        "summarize ratio",
    ]
    print(render_table(headers, rows))


if __name__ == "__main__":
    main()
