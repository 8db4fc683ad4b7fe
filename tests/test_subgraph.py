"""The agent embedded in larger graphs: (a) as a node of a MessagesState parent, (b) behind a
wrapper node of a parent with its own schema. Real savers, the real ChatOpenAI client against
the OpenAI stub, and a restart (new saver, new graphs) in the middle of each conversation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import tiktoken
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from typing_extensions import TypedDict

from tests.fixtures.openai_stub import OpenAIStub, RecordedRequest
from threadline.checkpointers import open_checkpointer
from threadline.dev.services import RedisServer
from threadline.embedding import make_subgraph, subgraph_config, wrapper_node
from threadline.graph.tokens import install_offline_encodings
from threadline.settings import Settings

SYSTEM_PROMPT = "You are the embedded test assistant."
BUDGET = 600
SUMMARY_CAP = 200
CODE = re.compile(r"\bcode-(\d+)\b")

BACKENDS = ["memory", "postgres", "tiered"]


# ------------------------------------------------------------------------------ the "model"


def is_chat_request(request: RecordedRequest) -> bool:
    """Chat turns carry our system prompt; anything else is the agent asking for a summary."""
    return request.system_text.startswith(SYSTEM_PROMPT)


def scripted_model(request: RecordedRequest) -> str:
    """Replies name the turn's code; summaries list every code seen so far, compactly."""
    if is_chat_request(request):
        codes = CODE.findall(request.last_user_text)
        return f"noted code-{codes[-1]}" if codes else "noted"
    seen = sorted({int(code) for text in request.texts() for code in CODE.findall(text)})
    return "Codes the user gave so far: " + " ".join(f"code-{n}" for n in seen)


def mentions(text: str, n: int) -> bool:
    return re.search(rf"\bcode-{n}\b", text) is not None


def user_turn(n: int) -> str:
    return (
        f"Turn {n}: please remember code-{n}. " + "Some filler to make the turn cost tokens. " * 3
    )


def request_tokens(request: RecordedRequest, encoding: Any) -> int:
    """Tokens of the request exactly as sent (OpenAI cookbook formula), counted independently."""
    total = 3
    for message in request.messages:
        total += 3
        for key in ("role", "content", "name"):
            value = message.get(key)
            if isinstance(value, str) and value:
                total += len(encoding.encode(value))
    return total


@pytest.fixture(scope="module")
def o200k() -> Any:
    install_offline_encodings()
    return tiktoken.get_encoding("o200k_base")


# ------------------------------------------------------------------------------ backends


@dataclass
class Backend:
    """A configured backend. Every `open()` after the first is a restart: a new saver
    instance (new pool); for tiered, Redis restarts too, so the hot tier comes back empty."""

    settings: Settings
    redis: RedisServer | None = None
    memory: InMemorySaver = field(default_factory=InMemorySaver)
    opened: int = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[BaseCheckpointSaver]:
        if self.settings.checkpointer == "memory":
            yield self.memory  # one process: a "restart" only rebuilds the graphs
            return
        if self.opened and self.redis is not None:
            self.redis.restart()
        self.opened += 1
        async with open_checkpointer(self.settings) as saver:
            yield saver


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """One backend, the OpenAI client pointed at the stub, a small budget."""
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    openai_stub.responder = scripted_model
    kind = request.param
    urls: dict[str, Any] = {}
    redis = None
    if kind in ("postgres", "tiered"):
        urls["postgres_url"] = request.getfixturevalue("postgres_db_url")
    if kind == "tiered":
        redis = request.getfixturevalue("redis_server_factory")()
        urls["redis_url"] = redis.url
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        model="openai:gpt-4o-mini",
        system_prompt=SYSTEM_PROMPT,
        max_context_tokens=BUDGET,
        summary_max_tokens=SUMMARY_CAP,
        checkpointer=kind,
        **urls,
    )
    return Backend(settings, redis)


# ------------------------------------------------------------------------------ (a) node


def messages_parent(settings: Settings, saver: BaseCheckpointSaver) -> Any:
    """Pattern (a): the compiled agent is itself the node of a MessagesState parent."""
    builder = StateGraph(MessagesState)
    builder.add_node("threadline", make_subgraph(settings))
    builder.add_edge(START, "threadline")
    builder.add_edge("threadline", END)
    return builder.compile(checkpointer=saver)


async def test_subgraph_node_keeps_budget_summary_and_transcript_across_restart(
    backend: Backend, openai_stub: OpenAIStub, o200k: Any
) -> None:
    config = {"configurable": {"thread_id": "parent-a"}}
    turns, restart_after = 50, 25
    async with backend.open() as saver:
        parent = messages_parent(backend.settings, saver)
        for n in range(1, restart_after + 1):
            await parent.ainvoke({"messages": [HumanMessage(user_turn(n))]}, config)
        child = await saver.aget_tuple(subgraph_config(config, "threadline"))
        assert child is not None, "the agent's state is not stored under its own namespace"
        before = child.checkpoint["channel_values"]
    assert mentions(before["summary"], 1)
    assert before["total_folds"] >= 1

    requests_before_restart = len(openai_stub.completions)
    async with backend.open() as saver:
        parent = messages_parent(backend.settings, saver)  # new graph objects, new model client
        for n in range(restart_after + 1, turns + 1):
            await parent.ainvoke({"messages": [HumanMessage(user_turn(n))]}, config)

        # The first turn after the restart already shows the summary written before it.
        chats_after = [
            r for r in openai_stub.completions[requests_before_restart:] if is_chat_request(r)
        ]
        assert mentions(chats_after[0].system_text, 1)
        assert not any(mentions(text, 1) for text in chats_after[0].texts("user"))

        # Every request the model received stayed within the budget, counted independently.
        chats = [r for r in openai_stub.completions if is_chat_request(r)]
        sizes = [request_tokens(r, o200k) for r in chats]
        assert len(sizes) == turns
        assert max(sizes) <= BUDGET, sizes

        # The parent's transcript is whole: every turn and reply, in order, nothing removed.
        state = await parent.aget_state(config)
        messages = state.values["messages"]
        assert [m.content for m in messages if isinstance(m, HumanMessage)] == [
            user_turn(n) for n in range(1, turns + 1)
        ]
        assert [m.content for m in messages if isinstance(m, AIMessage)] == [
            f"noted code-{n}" for n in range(1, turns + 1)
        ]
        assert len(messages) == 2 * turns

        # The agent's own state extended the summary instead of starting again.
        child_state = await parent.aget_state(subgraph_config(config, "threadline"))
        assert child_state.values["total_folds"] > before["total_folds"]
        assert child_state.values["summarized_count"] > before["summarized_count"]
        assert mentions(child_state.values["summary"], 1)
        assert child_state.values["telemetry"]["budget"] == BUDGET
        assert [m.id for m in child_state.values["messages"]] == [m.id for m in messages]

        # Read straight from the backend, not through the graph.
        stored = await saver.aget_tuple(subgraph_config(config, "threadline"))
        assert stored is not None
        assert stored.checkpoint["channel_values"]["summary"] == child_state.values["summary"]


async def test_subgraph_without_persistent_compile_forgets_its_summary_each_turn(
    backend: Backend,
) -> None:
    """Why `make_subgraph` compiles with `checkpointer=True`: otherwise each turn starts over."""
    config = {"configurable": {"thread_id": "parent-plain"}}
    from threadline.assembly import make_graph

    async with backend.open() as saver:
        builder = StateGraph(MessagesState)
        builder.add_node("threadline", make_graph(settings=backend.settings))
        builder.add_edge(START, "threadline")
        builder.add_edge("threadline", END)
        parent = builder.compile(checkpointer=saver)
        for n in range(1, 13):
            await parent.ainvoke({"messages": [HumanMessage(user_turn(n))]}, config)
        namespaces = {
            t.config["configurable"]["checkpoint_ns"]
            async for t in saver.alist({"configurable": {"thread_id": "parent-plain"}})
        }
    assert "threadline" not in namespaces
    assert len([ns for ns in namespaces if ns.startswith("threadline:")]) == 12


# ------------------------------------------------------------------------------ (b) wrapper


class TicketState(TypedDict, total=False):
    """A parent that speaks in tickets, not messages."""

    question: str
    answer: str
    answered: int


def ticket_parent(settings: Settings, saver: BaseCheckpointSaver) -> Any:
    """Pattern (b): a wrapper node maps `question` into a turn and the reply into `answer`."""
    node = wrapper_node(
        make_subgraph(settings),
        ask=lambda state: state["question"],
        answer=lambda reply, agent: {
            "answer": reply.text,
            "answered": len(agent["messages"]) // 2,
        },
    )
    builder = StateGraph(TicketState)
    builder.add_node("support", node)
    builder.add_edge(START, "support")
    builder.add_edge("support", END)
    return builder.compile(checkpointer=saver)


async def test_wrapper_node_maps_state_and_keeps_memory_across_restart(
    backend: Backend, openai_stub: OpenAIStub, o200k: Any
) -> None:
    config = {"configurable": {"thread_id": "parent-b"}}
    turns, restart_after = 30, 15
    async with backend.open() as saver:
        parent = ticket_parent(backend.settings, saver)
        for n in range(1, restart_after + 1):
            out = await parent.ainvoke({"question": user_turn(n)}, config)
            assert out["answer"] == f"noted code-{n}"
            assert out["answered"] == n

    openai_stub.clear()
    async with backend.open() as saver:
        parent = ticket_parent(backend.settings, saver)
        for n in range(restart_after + 1, turns + 1):
            out = await parent.ainvoke({"question": user_turn(n)}, config)
            assert out["answer"] == f"noted code-{n}"
            assert out["answered"] == n

        chats = [r for r in openai_stub.completions if is_chat_request(r)]
        assert mentions(chats[0].system_text, 1)
        assert max(request_tokens(r, o200k) for r in chats) <= BUDGET

        # The parent stores only its own keys; the transcript lives in the agent's namespace.
        parent_tuple = await saver.aget_tuple(config)
        assert parent_tuple is not None
        assert "messages" not in parent_tuple.checkpoint["channel_values"]
        agent = await saver.aget_tuple(subgraph_config(config, "support"))
        assert agent is not None
        # The transcript is stored as deltas: read it back through the graph.
        agent_state = await parent.aget_state(subgraph_config(config, "support"))
        transcript = agent_state.values["messages"]
        assert [m.content for m in transcript if isinstance(m, HumanMessage)] == [
            user_turn(n) for n in range(1, turns + 1)
        ]
        assert agent.checkpoint["channel_values"]["total_folds"] >= 2


def test_embedding_runs_synchronously_and_nested_two_levels_deep(
    openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync twins of both patterns, with the agent two subgraphs below the root."""
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    openai_stub.responder = scripted_model
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        model="openai:gpt-4o-mini",
        system_prompt=SYSTEM_PROMPT,
        max_context_tokens=BUDGET,
        summary_max_tokens=SUMMARY_CAP,
        checkpointer="memory",
    )
    saver = InMemorySaver()
    desk = StateGraph(TicketState)
    desk.add_node(
        "support",
        wrapper_node(
            make_subgraph(settings),
            ask=lambda state: state["question"],
            answer=lambda reply, agent: {"answer": reply.text, "answered": len(agent["messages"])},
        ),
    )
    desk.add_edge(START, "support")
    desk.add_edge("support", END)
    root = StateGraph(TicketState)
    root.add_node("desk", desk.compile(checkpointer=True))
    root.add_edge(START, "desk")
    root.add_edge("desk", END)
    graph = root.compile(checkpointer=saver)

    config = {"configurable": {"thread_id": "nested"}}
    for n in range(1, 21):
        out = graph.invoke({"question": user_turn(n)}, config)
        assert out["answer"] == f"noted code-{n}"
        assert out["answered"] == 2 * n
    agent = graph.get_state(subgraph_config(config, "desk", "support")).values
    assert agent["total_folds"] >= 1
    assert mentions(agent["summary"], 1)
    assert len(agent["messages"]) == 40
