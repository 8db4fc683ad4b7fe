"""The agent graph: START → trim_or_summarize → model → END (plus an optional tool loop).

`build_graph` returns the uncompiled `StateGraph` for embedding and customising; `make_graph`
compiles it with whatever checkpointer the caller injects (the graph knows no storage). Importing
this package reads no settings: the composition roots (CLI, server, `threadline.studio`, which
exports the graph `langgraph.json` loads) pass them in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from threadline.compat import RunnableCallable
from threadline.graph.context import Context, MemoryPolicy
from threadline.graph.models import make_chat_model
from threadline.graph.nodes import AgentNodes
from threadline.graph.state import InputState, ThreadState
from threadline.graph.tokens import make_token_counter
from threadline.settings import Settings

GRAPH_NAME = "threadline"


def build_graph(
    settings: Settings | None = None,
    *,
    model: BaseChatModel | Callable[[], BaseChatModel] | None = None,
    policy: MemoryPolicy | None = None,
    tools: Sequence[BaseTool] = (),
) -> StateGraph[ThreadState, Context, InputState, ThreadState]:
    """The uncompiled agent. Without arguments, model and budget come from `Settings()`.

    `model` may be a chat model or a zero-argument factory; either way it is only created when
    the first turn needs it.
    """
    settings = settings or Settings.from_env()
    model_factory: Callable[[], BaseChatModel]
    if model is None:
        model_factory = lambda: make_chat_model(settings)  # noqa: E731
    elif isinstance(model, BaseChatModel):
        model_factory = lambda: model  # noqa: E731
    else:
        model_factory = model
    # Count with the given model's own tokenizer when it names one.
    model_name = getattr(model, "model_name", None)
    nodes = AgentNodes(
        policy=policy or MemoryPolicy.from_settings(settings),
        counter=make_token_counter(
            model_name if isinstance(model_name, str) else settings.model_name,
            settings.token_counter,
        ),
        model_factory=model_factory,
        tools=tuple(tools),
    )
    builder = StateGraph(ThreadState, context_schema=Context, input_schema=InputState)
    builder.add_node(
        "trim_or_summarize",
        RunnableCallable(nodes.trim_or_summarize, nodes.atrim_or_summarize),
    )
    builder.add_node("model", RunnableCallable(nodes.call_model, nodes.acall_model))
    builder.add_edge(START, "trim_or_summarize")
    builder.add_edge("trim_or_summarize", "model")
    if tools:
        builder.add_node("tools", ToolNode(list(tools)))
        builder.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
        builder.add_edge("tools", "trim_or_summarize")
    else:
        builder.add_edge("model", END)
    return builder


def make_graph(
    checkpointer: BaseCheckpointSaver | None = None,
    settings: Settings | None = None,
    *,
    model: BaseChatModel | Callable[[], BaseChatModel] | None = None,
    policy: MemoryPolicy | None = None,
    tools: Sequence[BaseTool] = (),
) -> CompiledStateGraph[ThreadState, Context, InputState, ThreadState]:
    """The compiled agent, persisting through `checkpointer` when one is given."""
    builder = build_graph(settings, model=model, policy=policy, tools=tools)
    return builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)
