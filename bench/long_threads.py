"""Long-thread benchmark: per-turn latency and bytes per thread as a thread grows.

    .venv/bin/python -m bench.long_threads            # lengths 10, 100, 1000, 5000
    .venv/bin/python -m bench.long_threads --quick    # lengths 10, 100, 1000
    .venv/bin/python -m bench.long_threads --backends postgres,dynamodb,firestore

Every subject runs the same conversation (the threadline agent with the offline model, ~200
characters of text per message) in one process, against the same throwaway Postgres and Redis
and, for the cloud backends, DynamoDB Local and the Firestore emulator started by the bench
(`--backends` picks the subjects; default all):

- `postgres`, `tiered`, `dynamodb`, `firestore`: threadline on that backend, turns run as the
  server runs them;
- `postgres-default`: threadline on postgres with LangGraph's default durability;
- `stock`: the same agent graph on the stock `AsyncPostgresSaver`;
- `history`: the classic `RunnableWithMessageHistory` + `PostgresChatMessageHistory` (one row
  per message).

Threads grow by real turns to each length, then 30 turns are timed (median ms), on as many
threads as keep each within a tenth of the length while timed (so @10 means threads of 10-12
messages), interleaved across subjects, each after a short pause and on a collected and frozen
heap (`gc.freeze`): the subjects share the services and one process, and what one subject
leaves behind (background work in Postgres, garbage to collect) must not run on another's
clock; a turn's own garbage is still collected on its own. Bytes per thread are the on-disk size of
every row of that thread (`pg_column_size`, so TOAST compression counts as it does on disk)
plus, for tiered, the Redis memory of its keys (`MEMORY USAGE`, exact). DynamoDB: the item
sizes of the thread's partition (one Query), by DynamoDB's rules for attribute names and
values plus its 100 bytes of per-item overhead (`layout.item_size`). Firestore: the thread's
document and every document of its subcollections, sized by Firestore's documented storage
rules (document name, field names and values, 32 bytes per document); index entries are not
counted. Ratios against `postgres` are printed when it ran. DynamoDB Local and the Firestore
emulator are local stand-ins: their milliseconds are not what the cloud services take.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from bench.common import (
    FIRESTORE_PROJECT,
    BenchServices,
    Emulators,
    bench_services,
    emulators,
    median,
    render_table,
)
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
DYNAMODB_TABLE = "threadline-bench"
FIRESTORE_COLLECTION = "threadline_bench"
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


def dynamodb_bytes(client: Any, table: str, thread_id: str) -> int:
    """Sum of the item sizes of the thread's partition (every checkpoint, value, write,
    receipt and chunk; blocking)."""
    from threadline.checkpointers.dynamodb.layout import item_size, thread_pk

    pages = client.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": thread_pk(thread_id)}},
        ConsistentRead=True,
    )
    return sum(item_size(item) for page in pages for item in page.get("Items", []))


def _string_size(value: str) -> int:
    return len(value.encode()) + 1


def firestore_value_size(value: object) -> int:
    """A field value's storage size by Firestore's documented rules."""
    from google.cloud.firestore_v1 import GeoPoint
    from google.cloud.firestore_v1.base_document import BaseDocumentReference

    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, int | float | datetime):
        return 8
    if isinstance(value, str):
        return _string_size(value)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, GeoPoint):
        return 16
    if isinstance(value, BaseDocumentReference):
        return firestore_name_size(value.path)
    if isinstance(value, Mapping):
        return sum(_string_size(str(k)) + firestore_value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(firestore_value_size(v) for v in value)
    raise TypeError(f"no Firestore size for {type(value).__name__}")


def firestore_name_size(path: str) -> int:
    """A document name's size: each collection and document id of its path, plus 16."""
    return sum(_string_size(part) for part in path.split("/")) + 16


def firestore_doc_size(path: str, data: Mapping[str, object]) -> int:
    """A document's storage size: name, fields (names and values), plus 32."""
    return firestore_name_size(path) + firestore_value_size(data) + 32


async def firestore_bytes(client: Any, collection: str, thread_id: str) -> int:
    """Stored size of the thread's document (if any) and every document of its
    subcollections (index entries not counted)."""
    from threadline.checkpointers.firestore.layout import thread_doc_id

    thread = client.collection(f"{collection}_threads").document(thread_doc_id(thread_id))
    snap = await thread.get()
    total = firestore_doc_size(thread.path, snap.to_dict() or {}) if snap.exists else 0
    async for sub in thread.collections():
        async for doc in sub.stream():
            total += firestore_doc_size(doc.reference.path, doc.to_dict() or {})
    return total


Weigh = Callable[[str], Awaitable[int]]  # thread id → bytes stored for it


def postgres_settings(kind: str, services: BenchServices) -> Settings:
    return Settings(
        model="fake",
        checkpointer=kind,  # type: ignore[arg-type]
        postgres_url=services.postgres_url,  # type: ignore[arg-type]
        redis_url=services.plain_redis_url,  # type: ignore[arg-type]
    )


def postgres_weigh(kind: str, services: BenchServices) -> Weigh:
    async def weigh(thread_id: str) -> int:
        size = await rows_bytes(services.postgres_url, CHECKPOINT_TABLES, "thread_id", thread_id)
        if kind == "tiered":
            size += await redis_bytes(services.plain_redis_url, thread_id)
        return size

    return weigh


@asynccontextmanager
async def threadline_subject(
    kind: str, settings: Settings, weigh: Weigh, durability: str | None = SERVED_DURABILITY
) -> AsyncIterator[Subject]:
    """threadline on a backend; turns as the server runs them, or with `durability=None`
    LangGraph's default (a checkpoint per step: four per turn of this agent)."""
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

            return Thread(turn, lambda: weigh(thread_id))

        suffix = "" if durability == SERVED_DURABILITY else " (default durability)"
        yield Subject(f"threadline {kind}{suffix}", new_thread)


@asynccontextmanager
async def postgres_subject(
    kind: str, services: BenchServices, durability: str | None = SERVED_DURABILITY
) -> AsyncIterator[Subject]:
    """threadline on `postgres` or `tiered`."""
    settings = postgres_settings(kind, services)
    weigh = postgres_weigh(kind, services)
    async with threadline_subject(kind, settings, weigh, durability) as subject:
        yield subject


@asynccontextmanager
async def dynamodb_subject(endpoint_url: str) -> AsyncIterator[Subject]:
    """threadline on DynamoDB Local."""
    from threadline.dev.services import dynamodb_client

    settings = Settings(
        model="fake",
        checkpointer="dynamodb",
        dynamodb_table=DYNAMODB_TABLE,
        dynamodb_endpoint_url=endpoint_url,
    )
    client = dynamodb_client(endpoint_url)

    async def weigh(thread_id: str) -> int:
        return await asyncio.to_thread(dynamodb_bytes, client, DYNAMODB_TABLE, thread_id)

    async with threadline_subject("dynamodb", settings, weigh) as subject:
        yield subject


@asynccontextmanager
async def firestore_subject() -> AsyncIterator[Subject]:
    """threadline on the Firestore emulator (`FIRESTORE_EMULATOR_HOST` set)."""
    from google.cloud.firestore import AsyncClient

    settings = Settings(
        model="fake",
        checkpointer="firestore",
        firestore_project=FIRESTORE_PROJECT,
        firestore_collection=FIRESTORE_COLLECTION,
    )
    client = AsyncClient(project=FIRESTORE_PROJECT)

    async def weigh(thread_id: str) -> int:
        return await firestore_bytes(client, FIRESTORE_COLLECTION, thread_id)

    try:
        async with threadline_subject("firestore", settings, weigh) as subject:
            yield subject
    finally:
        client.close()


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


HISTORY = "RunnableWithMessageHistory + PostgresChatMessageHistory"
POSTGRES = "threadline postgres"
Opener = Callable[[BenchServices | None, Emulators], AbstractAsyncContextManager[Subject]]
# --backends name → (what opens the subject, whether it needs Postgres and Redis)
BACKENDS: dict[str, tuple[Opener, bool]] = {
    "postgres": (lambda s, e: postgres_subject("postgres", _pg(s)), True),
    "tiered": (lambda s, e: postgres_subject("tiered", _pg(s)), True),
    "postgres-default": (lambda s, e: postgres_subject("postgres", _pg(s), None), True),
    "stock": (lambda s, e: stock_postgres_subject(_pg(s)), True),
    "history": (lambda s, e: message_history_subject(_pg(s)), True),
    "dynamodb": (lambda s, e: dynamodb_subject(e.dynamodb_endpoint or ""), False),
    "firestore": (lambda s, e: firestore_subject(), False),
}


def _pg(services: BenchServices | None) -> BenchServices:
    assert services is not None, "Postgres and Redis were not started"
    return services


def report(table: dict[str, dict[int, tuple[float, int]]], lengths: tuple[int, ...]) -> str:
    """The results table, plus ratios to threadline postgres when it ran."""
    last = lengths[-1]
    baseline = table.get(HISTORY)
    headers = [
        "subject",
        *(f"ms/turn @{n}" for n in lengths),
        f"@{last} / @{lengths[0]}",
        *(f"KiB @{n}" for n in lengths),
    ]
    if baseline:
        headers.append(f"bytes vs history @{last}")
    rows = []
    for name, results in table.items():
        first, final = results[lengths[0]][0], results[last][0]
        row = [
            name,
            *(f"{results[n][0]:.1f}" for n in lengths),
            f"{final / first:.2f}x",
            *(f"{results[n][1] / 1024:.0f}" for n in lengths),
        ]
        if baseline:
            row.append(f"{results[last][1] / baseline[last][1]:.2f}x")
        rows.append(row)
    lines = [render_table(headers, rows)]
    if pg := table.get(POSTGRES):
        ratio_headers = [
            "vs threadline postgres, same run",
            *(f"ms/turn @{n}" for n in lengths),
            *(f"bytes @{n}" for n in lengths),
        ]
        ratio_rows = [
            [
                name,
                *(f"{results[n][0] / pg[n][0]:.2f}x" for n in lengths),
                *(f"{results[n][1] / pg[n][1]:.2f}x" for n in lengths),
            ]
            for name, results in table.items()
            if name != POSTGRES
        ]
        if ratio_rows:
            lines += ["", render_table(ratio_headers, ratio_rows)]
    return "\n".join(lines)


async def main(lengths: tuple[int, ...], backends: list[str]) -> None:
    with ExitStack() as services_stack:
        services = (
            services_stack.enter_context(bench_services())
            if any(BACKENDS[b][1] for b in backends)
            else None
        )
        local = services_stack.enter_context(
            emulators(dynamodb="dynamodb" in backends, firestore="firestore" in backends)
        )
        async with AsyncExitStack() as stack:
            subjects = [
                await stack.enter_async_context(BACKENDS[b][0](services, local)) for b in backends
            ]
            table = await measure(subjects, lengths)
    print()
    print(report(table, lengths))


def backend_list(value: str) -> list[str]:
    """`--backends a,b`: known names, in the order given, once each."""
    chosen = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if unknown := [b for b in chosen if b not in BACKENDS]:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}"
        )
    if not chosen:
        raise argparse.ArgumentTypeError("no backend given")
    return chosen


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 10, 100, 1000 only")
    parser.add_argument(
        "--backends",
        type=backend_list,
        default=list(BACKENDS),
        help=f"comma-separated subjects, of {','.join(BACKENDS)} (default: all)",
    )
    args = parser.parse_args()
    asyncio.run(main(LENGTHS[:3] if args.quick else LENGTHS, args.backends))
