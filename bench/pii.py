"""Sensitive-data detection: false positives on ordinary chat text, and the cost per turn.

    .venv/bin/python -m bench.pii [--sentences 400] [--turns 200]

1. A fixed corpus (seeded, so every run reads the same sentences) of ordinary chat lines full
   of numbers that are not personal data: dates, times, versions, prices, percentages, order
   and ticket numbers, measurements, years, ports, build numbers. Printed: how many sentences
   the detector flags, by entity, and examples.
2. Turns through the server's turn path (memory saver, the offline model, each message ~300
   characters with no sensitive value, every 10th with an email and a card) with
   THREADLINE_PII_STRATEGY off and redact, interleaved: ms per turn and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from typing import Any

from langchain_core.messages import HumanMessage

from threadline.assembly import make_graph, protector
from threadline.checkpointers.memory import MemorySaver
from threadline.server.turns import TurnRunner
from threadline.settings import Settings

TEMPLATES = [
    "The meeting moved to {date} at {time}, room {room}.",
    "We upgraded to version {version} and the build {build} passed.",
    "It costs ${price} per month, or {euros} EUR a year.",
    "Sales grew {pct}% in Q{q} {year}, to {big} units.",
    "My order #{order} shipped on {date}; tracking says {days} days.",
    "Ticket {ticket} was closed after {hours} hours.",
    "The box is {cm} x {cm2} x {cm3} cm and weighs {kg} kg.",
    "Python {py} dropped support for {old}; we still run {version}.",
    "Port {port} is open on the staging host, PID {pid}.",
    "The recipe needs {g} g flour, {ml} ml milk and {eggs} eggs, bake {mins} minutes at {deg} C.",
    "Flight {flight} leaves at {time} from gate {gate}, seat {seat}.",
    "Chapter {ch}, page {page}, line {line} has the quote.",
    "The score was {a}-{b} after {mins} minutes of extra time.",
    "In {year} the population was {big}, up from {big2} in {year2}.",
    "Invoice {invoice} for {price} USD is due {date}.",
    "Set the timeout to {ms} ms and retry {n} times with {pct}% jitter.",
    "The commit {sha} fixed issue {issue} in release {version}.",
    "Call me tomorrow between {time} and {time2}.",
    "Our ZIP code changed to {zip} last year.",
    "The model has {params}B parameters and a {ctx}k context window.",
]


def corpus(size: int) -> list[str]:
    rng = random.Random(7)

    def fill(template: str) -> str:
        values: dict[str, Any] = {
            "date": f"{rng.randrange(2019, 2027)}-{rng.randrange(1, 13):02d}-"
            f"{rng.randrange(1, 29):02d}",
            "time": f"{rng.randrange(0, 24):02d}:{rng.choice(['00', '15', '30', '45'])}",
            "time2": f"{rng.randrange(0, 24):02d}:{rng.choice(['00', '30'])}",
            "room": rng.randrange(100, 999),
            "version": f"{rng.randrange(0, 20)}.{rng.randrange(0, 30)}.{rng.randrange(0, 99)}",
            "build": rng.randrange(1000, 999999),
            "price": f"{rng.randrange(1, 5000):,}.{rng.randrange(100):02d}",
            "euros": rng.randrange(10, 90000),
            "pct": rng.randrange(1, 99),
            "q": rng.randrange(1, 5),
            "year": rng.randrange(1950, 2027),
            "year2": rng.randrange(1900, 1950),
            "big": f"{rng.randrange(1000, 99_999_999):,}",
            "big2": f"{rng.randrange(1000, 9_999_999):,}",
            "order": rng.randrange(100000, 99999999),
            "days": rng.randrange(1, 30),
            "ticket": f"INC-{rng.randrange(1000, 999999)}",
            "hours": rng.randrange(1, 200),
            "cm": rng.randrange(5, 200),
            "cm2": rng.randrange(5, 200),
            "cm3": rng.randrange(5, 200),
            "kg": round(rng.uniform(0.1, 80), 1),
            "py": f"3.{rng.randrange(6, 14)}",
            "old": f"3.{rng.randrange(0, 6)}",
            "port": rng.randrange(1024, 65535),
            "pid": rng.randrange(100, 400000),
            "g": rng.randrange(50, 1000),
            "ml": rng.randrange(50, 1000),
            "eggs": rng.randrange(1, 6),
            "mins": rng.randrange(5, 120),
            "deg": rng.randrange(120, 250),
            "flight": f"{rng.choice(['LH', 'BA', 'UA', 'AF'])}{rng.randrange(100, 9999)}",
            "gate": f"{rng.choice('ABCDE')}{rng.randrange(1, 60)}",
            "seat": f"{rng.randrange(1, 40)}{rng.choice('ABCDEF')}",
            "ch": rng.randrange(1, 40),
            "page": rng.randrange(1, 900),
            "line": rng.randrange(1, 60),
            "a": rng.randrange(0, 9),
            "b": rng.randrange(0, 9),
            "invoice": f"{rng.randrange(2019, 2027)}-{rng.randrange(1, 99999):05d}",
            "ms": rng.randrange(100, 60000),
            "n": rng.randrange(1, 10),
            "sha": f"{rng.getrandbits(28):07x}",
            "issue": f"#{rng.randrange(1, 40000)}",
            "zip": f"{rng.randrange(10000, 99999)}",
            "params": rng.choice([1, 3, 7, 8, 13, 70, 405]),
            "ctx": rng.choice([8, 32, 128, 200]),
        }
        return template.format(**values)

    return [fill(TEMPLATES[i % len(TEMPLATES)]) for i in range(size)]


def false_positives(sentences: list[str]) -> None:
    settings = Settings(_env_file=None, pii_strategy="redact")  # type: ignore[call-arg]
    found = protector(settings)
    assert found is not None
    flagged: Counter[str] = Counter()
    examples: list[str] = []
    for sentence in sentences:
        findings = found.detector.find(sentence)
        for f in findings:
            flagged[f.entity] += 1
        if findings and len(examples) < 8:
            examples.append(
                " | ".join(f"{f.entity}: {sentence[f.start : f.end]!r}" for f in findings)
            )
    hit = sum(1 for s in sentences if found.detector.find(s))
    print(
        f"false positives: {hit} of {len(sentences)} sentences ({100 * hit / len(sentences):.1f}%)"
    )
    print(f"  by entity: {dict(flagged)}")
    for example in examples:
        print(f"  e.g. {example}")


async def turn_cost(turns: int) -> None:
    filler = "Here is what I think about the plan for next week, in a few more words. " * 4
    runners = {}
    for strategy in ("off", "redact"):
        settings = Settings(
            _env_file=None, model="fake", checkpointer="memory", pii_strategy=strategy
        )  # type: ignore[call-arg]
        graph = make_graph(MemorySaver(serde=None), settings)
        runners[strategy] = TurnRunner(graph, protector=protector(settings))
    times: dict[str, list[float]] = {"off": [], "redact": []}
    for n in range(turns):
        for strategy, runner in runners.items():  # interleaved: drift hits both
            text = filler + (
                " mail ada@example.com card 4111 1111 1111 1111" if n % 10 == 0 else ""
            )
            config: Any = {"configurable": {"thread_id": f"t{n % 20}"}}
            started = time.perf_counter()
            await runner.invoke({"messages": [HumanMessage(text)]}, config)
            times[strategy].append((time.perf_counter() - started) * 1000)
    off, redact = (statistics.median(times[s][turns // 5 :]) for s in ("off", "redact"))
    print(
        f"turn cost (median ms, {turns} turns each, 20 threads): off {off:.2f}, "
        f"redact {redact:.2f}, ratio {redact / off:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    false_positives(corpus(args.sentences))
    asyncio.run(turn_cost(args.turns))
