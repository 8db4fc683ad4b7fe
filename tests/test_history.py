"""History is never lost: every checkpoint and every branch of a delta-stored thread stays
readable with its exact values, on the durable and the tiered saver, while old snapshots that
replay can rebuild are retired.

Each read that matters is made by a new saver (an empty history cache), so it is what the
stored rows say, not what a process remembers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from tests.fixtures.checkpointers import offline_agent, thread_config
from threadline.checkpointers.delta import (
    HistoryCache,
    PendingSnapshots,
    StoredSnapshots,
    approx_bytes,
)
from threadline.compat import DeltaSnapshot
from threadline.graph.transcript import append_messages

BACKENDS = ["postgres", "tiered"]


class Counted(TypedDict):
    """A transcript that snapshots at every step, so that every put is a snapshot (the
    case that used to delete everything older), and a plain list beside it."""

    messages: Annotated[list[AnyMessage], DeltaChannel(append_messages, snapshot_frequency=1)]
    items: Annotated[list[int], DeltaChannel(operator.add, snapshot_frequency=1)]


def counted_graph(saver: Any) -> Any:
    def reply(state: Counted) -> dict[str, Any]:
        last = state["messages"][-1]
        return {"messages": [AIMessage(f"re: {last.content}")], "items": [len(state["items"])]}

    builder = StateGraph(Counted)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def contents(state: Any) -> list[str]:
    return [m.content for m in state.values.get("messages", [])]


def message_snapshots(db_url: str, thread_id: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'messages'"
            " AND type <> 'empty'",
            (thread_id,),
        ).fetchone()
    return int(row[0]) if row else 0


async def two_turns(graph: Any, config: dict[str, Any]) -> tuple[Any, Any]:
    """The states after a first and a second turn ("one", "two")."""
    await graph.ainvoke({"messages": [HumanMessage("one")], "items": []}, config)
    first = await graph.aget_state(config)
    await graph.ainvoke({"messages": [HumanMessage("two")]}, config)
    return first, await graph.aget_state(config)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_run_from_an_old_checkpoint_leaves_the_abandoned_branch_readable(
    backend: str, open_backend: Callable[..., Any]
) -> None:
    config = thread_config("fork")
    async with open_backend(backend) as saver:
        graph = counted_graph(saver)
        first_head, old_head = await two_turns(graph, config)
        before = [s async for s in graph.aget_state_history(config)]
        await graph.ainvoke({"messages": [HumanMessage("other two")]}, first_head.config)

    async with open_backend(backend) as fresh:
        graph = counted_graph(fresh)
        after = [s async for s in graph.aget_state_history(config)]
        assert len(after) > len(before)
        abandoned = await graph.aget_state(old_head.config)
        assert contents(abandoned) == ["one", "re: one", "two", "re: two"]
        assert abandoned.values["items"] == old_head.values["items"]
        latest = await graph.aget_state(config)
        assert contents(latest) == ["one", "re: one", "other two", "re: other two"]
        for snapshot in before:  # every checkpoint of the first branch reads as it did
            again = await graph.aget_state(snapshot.config)
            assert again.values == snapshot.values


@pytest.mark.parametrize("backend", BACKENDS)
async def test_update_state_on_an_old_checkpoint_leaves_the_other_branch_alone(
    backend: str, open_backend: Callable[..., Any]
) -> None:
    config = thread_config("edit")
    async with open_backend(backend) as saver:
        graph = counted_graph(saver)
        first_head, old_head = await two_turns(graph, config)
        edited = await graph.aupdate_state(
            first_head.config, {"messages": [HumanMessage("edited")]}
        )
    async with open_backend(backend) as fresh:
        graph = counted_graph(fresh)
        assert contents(await graph.aget_state(old_head.config)) == contents(old_head)
        assert contents(await graph.aget_state(edited)) == ["one", "re: one", "edited"]
        assert contents(await graph.aget_state(first_head.config)) == ["one", "re: one"]


@pytest.mark.parametrize("durability", ["exit", "async"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_checkpoint_of_a_long_agent_thread_reads_back_exactly(
    backend: str,
    durability: str,
    open_backend: Callable[..., Any],
    postgres_db_url: str,
) -> None:
    """40 turns of the agent cross several transcript snapshots. Every checkpoint reads back
    what it held when written, and only the newest derived snapshot is still stored."""
    texts = [f"message {i} about bees and honey" for i in range(40)]
    config = thread_config("every")
    async with open_backend(backend) as saver:
        graph = offline_agent(saver)
        written = []
        for text in texts:
            await graph.ainvoke({"messages": [HumanMessage(text)]}, config, durability=durability)
            written.append(await graph.aget_state(config))
    async with open_backend(backend) as fresh:
        graph = offline_agent(fresh)
        history = [s async for s in graph.aget_state_history(config)]
        assert len(history) >= len(texts)
        by_id = {s.config["configurable"]["checkpoint_id"]: s for s in history}
        for state in written:
            again = by_id[state.config["configurable"]["checkpoint_id"]]
            assert contents(again) == contents(state)
            assert [m.id for m in again.values["messages"]] == [
                m.id for m in state.values["messages"]
            ]
        assert contents(history[0]) == contents(written[-1])
    assert message_snapshots(postgres_db_url, config["configurable"]["thread_id"]) <= 2


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_thread_compacted_by_an_earlier_version_reads_back_and_continues(
    backend: str, open_backend: Callable[..., Any], postgres_db_url: str
) -> None:
    """Earlier versions deleted everything older than a checkpoint holding a snapshot."""
    texts = [f"old {i}" for i in range(20)]
    config = thread_config("compacted")
    thread_id = config["configurable"]["thread_id"]
    async with open_backend(backend) as saver:
        graph = offline_agent(saver)
        for text in texts:
            await graph.ainvoke({"messages": [HumanMessage(text)]}, config, durability="exit")
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = %s"
            " AND checkpoint -> 'channel_values' ? 'messages'",
            (thread_id,),
        ).fetchone()
        assert row and row[0], "the agent snapshots its transcript within 20 turns"
        for table in ("checkpoint_writes", "checkpoints"):
            conn.execute(
                f"DELETE FROM {table} WHERE thread_id = %s AND checkpoint_id < %s",
                (thread_id, row[0]),
            )
        conn.execute("DELETE FROM threadline_delta_seeds WHERE thread_id = %s", (thread_id,))
    more = [f"new {i}" for i in range(30)]
    async with open_backend(backend) as saver:
        graph = offline_agent(saver)
        for text in more:
            await graph.ainvoke({"messages": [HumanMessage(text)]}, config, durability="exit")
    async with open_backend(backend) as fresh:
        state = await offline_agent(fresh).aget_state(config)
        humans = [m.content for m in state.values["messages"] if m.type == "human"]
        assert humans == texts + more


def test_snapshots_waiting_for_their_check_are_bounded_by_the_items_they_hold() -> None:
    pending = PendingSnapshots(max_items=10)
    for n in range(5):
        values = {"messages": ("1", [HumanMessage(str(i)) for i in range(4)])}
        pending.swap((f"t{n}", ""), StoredSnapshots(f"t{n}", "", f"c{n}", None, values))
    kept = [n for n in range(5) if pending.swap((f"t{n}", ""), None) is not None]
    assert kept == [3, 4]  # the newest two (8 items); older ones are simply never checked


def test_the_history_cache_is_bounded_by_bytes() -> None:
    cache = HistoryCache(max_bytes=200_000)
    for n in range(50):
        writes = [("task", "messages", [HumanMessage("x" * 2_000)]) for _ in range(10)]
        cache.put(("t", "", f"c{n:03d}", "messages"), {"writes": writes})
    assert 0 < len(cache) < 50
    held = sum(
        approx_bytes(found)
        for n in range(50)
        if (found := cache.get(("t", "", f"c{n:03d}", "messages"))) is not None
    )
    assert held <= 200_000
    assert cache.get(("t", "", "c049", "messages")) is not None  # the newest stays


@pytest.mark.parametrize("with_sibling", [False, True], ids=["only-child", "sibling"])
async def test_a_snapshot_tail_is_stored_only_on_a_parent_without_another_branch(
    with_sibling: bool, open_durable: Callable[..., Any], postgres_db_url: str
) -> None:
    """Under durability "exit" a snapshot's own writes are not stored; the saver stores them
    on the parent — unless another branch already left that parent without snapshotting, whose
    history would then replay them too."""
    thread_id = thread_config("tail")["configurable"]["thread_id"]
    base = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    message = HumanMessage("only on the snapshot's branch", id="m1")
    async with open_durable() as saver:
        parent = empty_checkpoint()
        parent_config = await saver.aput(base, parent, {}, {})
        await saver.aget_delta_channel_history(config=parent_config, channels=["messages"])
        snapshot = {
            **empty_checkpoint(),
            "channel_values": {"messages": DeltaSnapshot([message])},
            "channel_versions": {"messages": "2"},
        }
        await saver.aput(parent_config, snapshot, {}, {"messages": "2"})
        nxt = {**empty_checkpoint(), "channel_versions": {"messages": "3"}}
        # The thread's next put: a sibling of the snapshot, or a child of it.
        after = (
            parent_config
            if with_sibling
            else {"configurable": {**base["configurable"], "checkpoint_id": snapshot["id"]}}
        )
        await saver.aput(after, nxt, {}, {"messages": "3"})
    with psycopg.connect(postgres_db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_id = %s",
            (thread_id, parent["id"]),
        ).fetchone()
    assert row is not None
    assert row[0] == (0 if with_sibling else 1)
