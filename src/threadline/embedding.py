"""Embedding the agent in a larger LangGraph graph, with its memory intact across turns.

A subgraph compiled without a checkpointer runs under a fresh namespace (`node:<task id>`)
on every parent turn, so its running summary would be rebuilt from scratch each time.
`make_subgraph` compiles with `checkpointer=True` instead: the agent keeps one namespace
(`<node>`) under the parent's thread, persisted by the parent's saver, and extends its summary
turn after turn. Nothing here relies on `RemoveMessage`, which does not cross a subgraph
boundary: the transcript is only ever appended to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph

from threadline.assembly import agent_builder
from threadline.compat import NS_SEP, RunnableCallable
from threadline.graph.agent import GRAPH_NAME
from threadline.graph.context import Context, MemoryPolicy
from threadline.graph.state import InputState, ThreadState
from threadline.settings import Settings

Subgraph = CompiledStateGraph[ThreadState, Context, InputState, ThreadState]
Ask = Callable[[Any], str | Sequence[BaseMessage]]
Answer = Callable[[AIMessage, ThreadState], Mapping[str, Any]]


def make_subgraph(
    settings: Settings | None = None,
    *,
    model: BaseChatModel | Callable[[], BaseChatModel] | None = None,
    policy: MemoryPolicy | None = None,
    tools: Sequence[BaseTool] = (),
    name: str = GRAPH_NAME,
) -> Subgraph:
    """The agent, compiled to persist its own state through whatever saver its parent has.

    Add it as a node of a `MessagesState` parent (pattern a), or call it from a wrapper node
    (pattern b, `wrapper_node`). The parent must be compiled with a checkpointer.
    """
    builder = agent_builder(settings, model=model, policy=policy, tools=tools)
    return builder.compile(checkpointer=True, name=name)


def subgraph_config(config: RunnableConfig, *nodes: str) -> RunnableConfig:
    """Config that reads the agent's own state (summary, telemetry) from the parent graph.

    `nodes` is the path of node names from the parent down to the agent, e.g. `"threadline"`.
    """
    thread_id = config.get("configurable", {})["thread_id"]
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": NS_SEP.join(nodes)}}


def wrapper_node(subgraph: Subgraph, *, ask: Ask, answer: Answer) -> RunnableCallable:
    """A parent-graph node that maps the parent's state into one agent turn and back.

    `ask(parent_state)` gives the new turn (text or messages) — only the new turn, since the
    agent keeps the transcript itself; `answer(reply, agent_state)` gives the parent's update.
    """

    def turn_input(state: Any) -> InputState:
        turn = ask(state)
        messages = [HumanMessage(turn)] if isinstance(turn, str) else list(turn)
        return cast(InputState, {"messages": messages})

    def parent_update(result: Mapping[str, Any]) -> dict[str, Any]:
        state: ThreadState = result  # type: ignore[assignment]
        reply = state["messages"][-1]
        if not isinstance(reply, AIMessage):
            raise TypeError(f"the agent ended on a {type(reply).__name__}, not an AIMessage")
        return dict(answer(reply, state))

    def run(state: Any, config: RunnableConfig) -> dict[str, Any]:
        return parent_update(subgraph.invoke(turn_input(state), config))

    async def arun(state: Any, config: RunnableConfig) -> dict[str, Any]:
        return parent_update(await subgraph.ainvoke(turn_input(state), config))

    return RunnableCallable(run, arun, name=subgraph.name)
