"""Long-thread benchmark: per-turn latency and bytes per thread as a thread grows.

    .venv/bin/python -m bench.long_threads            # lengths 10, 100, 1000, 5000
    .venv/bin/python -m bench.long_threads --quick    # lengths 10, 100, 1000

Every subject runs the same conversation (the threadline agent with the offline model, ~200
characters of text per message) in one process against the same throwaway Postgres and Redis:

- threadline on its `postgres` and `tiered` backends, turns run as the server runs them;
- the same agent graph on the stock `AsyncPostgresSaver`;
- the classic `RunnableWithMessageHistory` + `PostgresChatMessageHistory` (one row per message).

Threads grow by real turns to each length, then 30 turns are timed (median ms), on as many
threads as keep each within a tenth of the length while timed (so @10 means threads of 10-12
messages), interleaved across subjects, each after a short pause and on a collected and frozen
heap (`gc.freeze`): the subjects share the services and one process, and what one subject
leaves behind (background work in Postgres, garbage to collect) must not run on another's
clock; a turn's own garbage is still collected on its own. Bytes per thread are the on-disk size of
every row of that thread (`pg_column_size`, so TOAST compression counts as it does on disk)
plus, for tiered, the Redis memory of its keys (`MEMORY USAGE`, exact).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import psycopg
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from bench.common import BenchServices, bench_services, median, render_table
from threadline.assembly import make_graph
from threadline.checkpointers import open_checkpointer
from threadline.checkpointers.durable import open_pool
from threadline.graph.models import OfflineChatModel
from threadline.settings import Settings

LENGTHS = (10, 100, 1000, 5000)
TIMED_TURNS = 30
# Pause before each timed turn, so that work a previous subject's turn left to the services
# (Postgres writing a 1000-message row, say) is not timed as the next subject's turn.
SETTLE_SECONDS = 0.05
SERVED_DURABILITY = "exit"  # how threadline's server runs a turn: one checkpoint, at its end
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
HISTORY_TABLE = "chat_history"
_WORDS = " ".join(
    [
        "the of and to in is you that it was for on are as with they at be this have from",
        "or one had by word but not what all were we when your can said there use each",
        "which she do how their if will up other about out many then them these so some",
        "her would make like him into time has look two more write go see number way",
        "could people than first water been call who oil now find long down day did get",
        "come made may part honey bees hive garden",
    ]
).split()

Turn = Callable[[str], Awaitable[object]]


@dataclass
class Thread:
    """One conversation: how to take a turn in it and how to weigh what it stores."""

    turn: Turn
    weigh: Callable[[], Awaitable[int]]


@dataclass
class Subject:
    """One way of keeping conversations."""

    name: str
    new_thread: Callable[[], Thread]


def sentence(rng: random.Random, chars: int = 200) -> str:
    """Ordinary words, so compression behaves as it would on real chat text."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(_WORDS))
    return " ".join(words)[:chars]


async def rows_bytes(url: str, tables: tuple[str, ...], column: str, key: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        total = 0
        for table in tables:
            cursor = await conn.execute(
                f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t WHERE {column} = %s",
                (key,),
            )
            row = await cursor.fetchone()
            total += int(row[0]) if row else 0
        return total


async def redis_bytes(url: str, thread_id: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        total = 0
        async for key in client.scan_iter(match=f"*{thread_id}*", count=1000):
            total += int(await client.memory_usage(key, samples=0) or 0)  # exact, not sampled
        return total
    finally:
        await client.aclose()


@asynccontextmanager
async def threadline_subject(
    kind: str, services: BenchServices, durability: str | None = SERVED_DURABILITY
) -> AsyncIterator[Subject]:
    """threadline on a backend; turns as the server runs them, or with `durability=None`
    LangGraph's default (a checkpoint per step: four per turn of this agent)."""
    settings = Settings(
        model="fake",
        checkpointer=kind,  # type: ignore[arg-type]
        postgres_url=services.postgres_url,  # type: ignore[arg-type]
        redis_url=services.plain_redis_url,  # type: ignore[arg-type]
    )
    async with open_checkpointer(settings) as saver:
        graph = make_graph(saver, settings)

        def new_thread() -> Thread:
            thread_id = f"long-{kind}-{uuid.uuid4().hex[:8]}"
            config = {"configurable": {"thread_id": thread_id}}

            async def turn(text: str) -> object:
                return await graph.ainvoke(
                    {"messages": [HumanMessage(text)]},
                    config,
                    durability=durability,  # type: ignore[arg-type]
                )

            async def weigh() -> int:
                size = await rows_bytes(
                    services.postgres_url, CHECKPOINT_TABLES, "thread_id", thread_id
                )
                if kind == "tiered":
                    size += await redis_bytes(services.plain_redis_url, thread_id)
                return size

            return Thread(turn, weigh)

        suffix = "" if durability == SERVED_DURABILITY else " (default durability)"
        yield Subject(f"threadline {kind}{suffix}", new_thread)


@asynccontextmanager
async def stock_postgres_subject(services: BenchServices) -> AsyncIterator[Subject]:
    settings = Settings(model="fake")
    async with open_pool(services.postgres_url, 10) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        graph = make_graph(saver, settings)

        def new_thread() -> Thread:
            thread_id = f"long-stock-{uuid.uuid4().hex[:8]}"
            config = {"configurable": {"thread_id": thread_id}}

            async def turn(text: str) -> object:
                return await graph.ainvoke({"messages": [HumanMessage(text)]}, config)

            async def weigh() -> int:
                return await rows_bytes(
                    services.postgres_url, CHECKPOINT_TABLES, "thread_id", thread_id
                )

            return Thread(turn, weigh)

        yield Subject("stock AsyncPostgresSaver", new_thread)


@asynccontextmanager
async def message_history_subject(services: BenchServices) -> AsyncIterator[Subject]:
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
    from langchain_core.runnables.history import RunnableWithMessageHistory
    from langchain_postgres import PostgresChatMessageHistory

    async with await psycopg.AsyncConnection.connect(
        services.postgres_url, autocommit=True
    ) as conn:
        await PostgresChatMessageHistory.acreate_tables(conn, HISTORY_TABLE)
        prompt = ChatPromptTemplate.from_messages(
            [
                ("system", "You are a helpful assistant."),
                MessagesPlaceholder("history"),
                ("human", "{input}"),
            ]
        )
        chain = RunnableWithMessageHistory(
            prompt | OfflineChatModel(),  # type: ignore[arg-type]
            lambda sid: PostgresChatMessageHistory(HISTORY_TABLE, sid, async_connection=conn),
            input_messages_key="input",
            history_messages_key="history",
        )

        def new_thread() -> Thread:
            session_id = str(uuid.uuid4())
            config = {"configurable": {"session_id": session_id}}

            async def turn(text: str) -> object:
                return await chain.ainvoke({"input": text}, config)  # type: ignore[arg-type]

            async def weigh() -> int:
                return await rows_bytes(
                    services.postgres_url, (HISTORY_TABLE,), "session_id", session_id
                )

            return Thread(turn, weigh)

        yield Subject("RunnableWithMessageHistory + PostgresChatMessageHistory", new_thread)


def timed_turns_per_thread(length: int) -> int:
    """Turns timed on one thread before the next: each adds two messages, and a thread may
    grow by at most a tenth while timed, so short lengths are timed on several threads."""
    return max(1, min(TIMED_TURNS, length // 20))


async def measure(
    subjects: list[Subject], lengths: tuple[int, ...]
) -> dict[str, dict[int, tuple[float, int]]]:
    """{subject: {length: (median ms of turns on threads of that length, bytes per thread)}}.

    Each subject grows threads to each length, then the timed turns interleave across
    subjects, so a burst of noise on the shared machine hits all of them alike.
    """
    rngs = {s.name: random.Random(7) for s in subjects}
    current = {s.name: (s.new_thread(), 0) for s in subjects}  # thread, its messages
    results: dict[str, dict[int, tuple[float, int]]] = {s.name: {} for s in subjects}

    async def grown(subject: Subject, thread: Thread, messages: int, length: int) -> int:
        while messages < length:
            await thread.turn(sentence(rngs[subject.name]))
            messages += 2  # a turn adds two messages
        return messages

    for length in lengths:
        per_thread = timed_turns_per_thread(length)
        times: dict[str, list[float]] = {s.name: [] for s in subjects}
        while len(times[subjects[0].name]) < TIMED_TURNS:
            for subject in subjects:
                thread, messages = current[subject.name]
                if len(times[subject.name]) and len(times[subject.name]) % per_thread == 0:
                    thread, messages = subject.new_thread(), 0
                current[subject.name] = (thread, await grown(subject, thread, messages, length))
            # The subjects share one process and the services: freeze what exists, so that
            # collecting one subject's garbage does not run on another's clock (a turn's own
            # garbage still does), and pause before each turn, so that background work a
            # previous turn left (Postgres writing a 1000-message row) is not timed as the next.
            gc.collect()
            gc.freeze()
            for _ in range(per_thread):
                for subject in subjects:
                    thread, messages = current[subject.name]
                    await asyncio.sleep(SETTLE_SECONDS)
                    start = time.perf_counter()
                    await thread.turn(sentence(rngs[subject.name]))
                    times[subject.name].append((time.perf_counter() - start) * 1000)
                    current[subject.name] = (thread, messages + 2)
            gc.unfreeze()
        for subject in subjects:
            thread, messages = current[subject.name]
            ms, size = median(times[subject.name]), await thread.weigh()
            results[subject.name][length] = (ms, size)
            print(
                f"  {subject.name}: {length} messages, {ms:.1f} ms/turn, {size / 1024:.0f} KiB "
                f"(a thread of {messages} messages)",
                flush=True,
            )
    return results


async def main(lengths: tuple[int, ...]) -> None:
    with bench_services() as services:
        async with AsyncExitStack() as stack:
            subjects = [
                await stack.enter_async_context(threadline_subject("postgres", services)),
                await stack.enter_async_context(threadline_subject("tiered", services)),
                await stack.enter_async_context(
                    threadline_subject("postgres", services, durability=None)
                ),
                await stack.enter_async_context(stock_postgres_subject(services)),
                await stack.enter_async_context(message_history_subject(services)),
            ]
            table = await measure(subjects, lengths)

    baseline = table["RunnableWithMessageHistory + PostgresChatMessageHistory"]
    headers = [
        "subject",
        *(f"ms/turn @{n}" for n in lengths),
        f"@{lengths[-1]} / @10",
        *(f"KiB @{n}" for n in lengths),
        f"bytes vs history @{lengths[-1]}",
    ]
    rows = []
    for name, results in table.items():
        first, last = results[lengths[0]][0], results[lengths[-1]][0]
        rows.append(
            [
                name,
                *(f"{results[n][0]:.1f}" for n in lengths),
                f"{last / first:.2f}x",
                *(f"{results[n][1] / 1024:.0f}" for n in lengths),
                f"{results[lengths[-1]][1] / baseline[lengths[-1]][1]:.2f}x",
            ]
        )
    print()
    print(render_table(headers, rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 10, 100, 1000 only")
    args = parser.parse_args()
    asyncio.run(main(LENGTHS[:3] if args.quick else LENGTHS))
