"""Long threads: the transcript is stored as deltas plus an occasional snapshot, every
checkpoint is kept while old derived snapshots are retired, and a turn decodes only what it
added.

Everything runs on the real Postgres and the module-free Redis, with the offline model: the
model is beside the point here, the stored transcript is the subject.
"""

from __future__ import annotations

import random
import re
import statistics
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph.message import add_messages
from redis.asyncio.connection import AbstractConnection
from typing_extensions import TypedDict

from tests.fixtures.checkpointers import TieredFactory, offline_agent, thread_config
from threadline.checkpointers.serde import make_serializer
from threadline.checkpointers.tiered import TieredSaver
from threadline.graph import agent
from threadline.graph.transcript import append_messages

BACKENDS = ["postgres", "tiered"]
AES_KEY = "0123456789abcdef0123456789abcdef"


class CountingSerializer(JsonPlusSerializer):
    """The real serializer, counting the bytes it decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        self.decoded += len(data[1] or b"")
        return super().loads_typed(data)


def sentences(count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    words = "bees hive honey garden queen comb wax pollen flower summer nectar frame".split()  # noqa: SIM905
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(30)) for i in range(count)]


def thread_rows(db_url: str, thread_id: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        counts = {}
        for table in ("checkpoints", "checkpoint_writes"):
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE thread_id = %s", (thread_id,)
            ).fetchone()
            counts[table] = row[0] if row else 0
        row = conn.execute(
            "SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'messages'",
            (thread_id,),
        ).fetchone()
        counts["message_blobs"] = row[0] if row else 0
    return counts


async def run_turns(
    graph: Any, config: dict[str, Any], texts: list[str], durability: str = "exit"
) -> Any:
    output = None
    for text in texts:
        output = await graph.ainvoke(
            {"messages": [HumanMessage(text)]},
            config,
            durability=durability,  # type: ignore[arg-type]
        )
    return output


def assert_whole_transcript(messages: list[AnyMessage], texts: list[str]) -> None:
    assert [m.content for m in messages if m.type == "human"] == texts
    assert [m.type for m in messages] == ["human", "ai"] * len(texts)
    assert len({m.id for m in messages}) == len(messages)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_long_thread_reads_back_whole_with_one_snapshot_stored(
    backend: str, encrypted: bool, open_backend: Callable[..., Any], postgres_db_url: str
) -> None:
    texts = sentences(60)
    config = thread_config("long")
    thread_id = config["configurable"]["thread_id"]
    serde = make_serializer(AES_KEY if encrypted else None)
    async with open_backend(backend, serde=serde) as saver:
        graph = offline_agent(saver)
        output = await run_turns(graph, config, texts)
        state = await graph.aget_state(config)
    assert_whole_transcript(state.values["messages"], texts)
    assert [m.id for m in output["messages"]] == [m.id for m in state.values["messages"]]

    rows = thread_rows(postgres_db_url, thread_id)
    assert rows["checkpoints"] == len(texts) + 1, rows  # one per turn, and the first input's
    # The newest derived snapshot, and at most one newer one not yet checked.
    assert 1 <= rows["message_blobs"] <= 2, rows

    # A new process (no cache) reads the same transcript, ids included, and continues it.
    fresh_serde = make_serializer(AES_KEY if encrypted else None)
    async with open_backend(backend, serde=fresh_serde) as fresh:
        graph = offline_agent(fresh)
        again = await graph.aget_state(config)
        assert [m.id for m in again.values["messages"]] == [m.id for m in state.values["messages"]]
        more = sentences(3, seed=9)
        await run_turns(graph, config, more)
        after = await graph.aget_state(config)
    assert_whole_transcript(after.values["messages"], texts + more)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_history_lists_every_turn_with_its_state(
    backend: str, open_backend: Callable[..., Any]
) -> None:
    texts = sentences(30)
    config = thread_config("hist")
    async with open_backend(backend) as saver:
        graph = offline_agent(saver)
        await run_turns(graph, config, texts)
        history = [s async for s in graph.aget_state_history(config)]
        seen = [
            [m.content for m in snapshot.values.get("messages", []) if m.type == "human"]
            for snapshot in reversed(history)
        ]
        assert seen == [texts[:turns] for turns in range(len(texts) + 1)]


@pytest.mark.parametrize("durability", ["exit", "async"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_turn_decodes_only_its_own_delta(
    backend: str, durability: str, open_backend: Callable[..., Any]
) -> None:
    """Bytes decoded per turn stay flat while the thread grows tenfold (medians: a turn
    that follows a snapshot reads that snapshot once), with a checkpoint per turn and with
    LangGraph's default of one per step."""
    serde = CountingSerializer()
    texts = sentences(220)
    config = thread_config("flat")

    async def decoded_per_turn(graph: Any, batch: list[str]) -> float:
        costs = []
        for text in batch:
            before = serde.decoded
            await run_turns(graph, config, [text], durability)
            costs.append(serde.decoded - before)
        return statistics.median(costs)

    async with open_backend(backend, serde=serde) as saver:
        graph = offline_agent(saver)
        await run_turns(graph, config, texts[:10], durability)
        short = await decoded_per_turn(graph, texts[10:19])
        await run_turns(graph, config, texts[19:200], durability)
        long = await decoded_per_turn(graph, texts[200:209])
    assert long <= short * 1.5 + 200, (short, long)


class LegacyInput(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


class LegacyThread(LegacyInput, total=False):
    summary: str
    summarized_count: int
    total_folds: int
    telemetry: dict[str, Any]
    summary_failed_turn: int


@pytest.mark.parametrize("backend", BACKENDS)
async def test_thread_written_before_delta_storage_reads_back_and_continues(
    backend: str, open_backend: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    old_texts, new_texts = sentences(5), sentences(30, seed=5)
    config = thread_config("legacy")
    with monkeypatch.context() as patch:
        patch.setattr(agent, "ThreadState", LegacyThread)
        patch.setattr(agent, "InputState", LegacyInput)
        async with open_backend(backend) as saver:
            await run_turns(offline_agent(saver), config, old_texts)
    async with open_backend(backend) as saver:
        graph = offline_agent(saver)
        before = await graph.aget_state(config)
        assert_whole_transcript(before.values["messages"], old_texts)
        await run_turns(graph, config, new_texts)
    async with open_backend(backend) as fresh:
        after = await offline_agent(fresh).aget_state(config)
    assert_whole_transcript(after.values["messages"], old_texts + new_texts)
    assert [m.id for m in after.values["messages"][:10]] == [
        m.id for m in before.values["messages"]
    ]


def test_reducer_is_batching_invariant_with_stable_ids() -> None:
    def fresh() -> list[Any]:
        return [HumanMessage("a"), AIMessage("b"), HumanMessage("a"), AIMessage("b", id="x")]

    one_by_one: list[AnyMessage] = []
    for message in fresh():
        one_by_one = append_messages(one_by_one, [message])
    in_one_batch = append_messages([], [fresh()])
    assert [m.id for m in one_by_one] == [m.id for m in in_one_batch]
    assert len({m.id for m in one_by_one}) == 4  # same text twice still makes two messages

    replaced = append_messages(one_by_one, [AIMessage("c", id="x"), HumanMessage("d")])
    assert [m.content for m in replaced] == ["a", "b", "a", "c", "d"]
    split = append_messages(append_messages(one_by_one, [AIMessage("c", id="x")]), ["d"])
    assert [m.id for m in split] == [m.id for m in replaced]

    removed = append_messages(replaced, [RemoveMessage(id="x")])
    assert [m.content for m in removed] == ["a", "b", "a", "d"]
    assert [m.content for m in one_by_one] == ["a", "b", "a", "b"]  # inputs left untouched


async def test_thread_storage_grows_linearly_with_its_whole_history_kept(
    open_durable: Callable[..., Any], postgres_db_url: str
) -> None:
    """Every checkpoint is kept, yet bytes per turn stay flat as the thread doubles (snapshots
    do not pile up), within a small multiple of a one-row-per-message history."""
    from langchain_postgres import PostgresChatMessageHistory

    texts = sentences(300)
    config = thread_config("bytes")
    thread_id = config["configurable"]["thread_id"]
    tables = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
    async with open_durable() as saver:
        graph = offline_agent(saver)
        await run_turns(graph, config, texts[:150])
        at_150 = weigh(postgres_db_url, tables, "thread_id", thread_id)
        state = await run_turns(graph, config, texts[150:])
    at_300 = weigh(postgres_db_url, tables, "thread_id", thread_id)
    assert (at_300 - at_150) / 150 <= 1.15 * at_150 / 150, (at_150, at_300)
    session = str(uuid.uuid4())
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        PostgresChatMessageHistory.create_tables(conn, "chat_history")
        PostgresChatMessageHistory("chat_history", session, sync_connection=conn).add_messages(
            state["messages"]
        )

    theirs = weigh(postgres_db_url, ("chat_history",), "session_id", session)
    # Measured 2.6x with the server's durability (a checkpoint row per turn is ~1 KB of
    # LangGraph bookkeeping); `keep_latest` retention is what brings it under 1x.
    assert 0 < at_300 <= 3 * theirs, (at_300, theirs)


def weigh(db_url: str, tables: tuple[str, ...], column: str, key: str) -> int:
    """On-disk bytes of the rows (TOAST compression counted as stored)."""
    with psycopg.connect(db_url) as conn:
        total = 0
        for table in tables:
            row = conn.execute(
                f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t WHERE {column} = %s",
                (key,),
            ).fetchone()
            total += int(row[0]) if row else 0
    return total


CHECKPOINT_TABLE = re.compile(r"\bcheckpoint(s|_blobs|_writes)\b")


class StoreCalls:
    """Counts commands sent to Redis (a script call is one) and queries of the checkpoint
    tables sent to Postgres, while in the `with` block."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.redis = 0
        self.postgres = 0
        self._monkeypatch = monkeypatch

    def __enter__(self) -> StoreCalls:
        send = AbstractConnection.send_packed_command
        execute = psycopg.AsyncCursor.execute

        async def counting_send(connection: Any, command: Any, check_health: bool = True) -> None:
            self.redis += 1
            await send(connection, command, check_health)

        async def counting_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            self.postgres += bool(CHECKPOINT_TABLE.search(str(query)))
            return await execute(cursor, query, *args, **kwargs)

        self._monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
        self._monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting_execute)
        return self

    def __exit__(self, *exc: object) -> None:
        self._monkeypatch.undo()


@pytest.mark.parametrize("durability", ["exit", "async"])
async def test_tiered_reads_a_long_thread_in_one_redis_round_trip(
    durability: str, open_tiered: TieredFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state of a delta thread (a snapshot plus the deltas since) is one Redis call and
    no Postgres query: for the replica that wrote it (sent only what it has not seen yet), for
    a replica with nothing cached, and after the entry was re-warmed from Postgres."""
    texts = sentences(45)
    more = sentences(3, seed=9)
    config = thread_config("hot-delta")

    async def hot_read(saver: TieredSaver) -> list[AnyMessage]:
        await saver.aget_tuple(thread_config("warm-up"))  # a starting saver loads its journal
        with StoreCalls(monkeypatch) as calls:
            state = await offline_agent(saver).aget_state(config)
        assert (calls.redis, calls.postgres) == (1, 0), "Redis calls, Postgres queries"
        return list(state.values["messages"])

    async with open_tiered() as writer:
        graph = offline_agent(writer)
        for text in texts:
            await graph.ainvoke({"messages": [HumanMessage(text)]}, config, durability=durability)
        assert_whole_transcript(await hot_read(writer), texts)
        assert writer.durable.delta_histories.newest(config["configurable"]["thread_id"], "")
    async with open_tiered() as replica:
        assert_whole_transcript(await hot_read(replica), texts)
        await replica.hot.invalidate(config["configurable"]["thread_id"], "")
    async with open_tiered() as replica:
        state = await offline_agent(replica).aget_state(config)  # a miss: warms Redis
        assert_whole_transcript(state.values["messages"], texts)
    async with open_tiered() as replica:
        assert_whole_transcript(await hot_read(replica), texts)
        await run_turns(offline_agent(replica), config, more)
        assert_whole_transcript(await hot_read(replica), texts + more)
