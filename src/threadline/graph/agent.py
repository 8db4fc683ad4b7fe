"""The agent graph: START → trim_or_summarize → model → END (plus an optional tool loop).

`build_graph` returns the uncompiled `StateGraph` over the dependencies it is given (model,
memory policy, token counter, tools); the caller compiles it with whatever checkpointer it
injects (the graph knows no storage) and turns settings into dependencies
(`threadline.assembly`): the graph reads no settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from threadline.compat import RunnableCallable
from threadline.graph.context import Context, MemoryPolicy
from threadline.graph.nodes import AgentNodes
from threadline.graph.state import InputState, ThreadState
from threadline.graph.tokens import TokenCounter

GRAPH_NAME = "threadline"


def build_graph(
    *,
    model: BaseChatModel | Callable[[], BaseChatModel],
    policy: MemoryPolicy,
    counter: TokenCounter,
    tools: Sequence[BaseTool] = (),
) -> StateGraph[ThreadState, Context, InputState, ThreadState]:
    """The uncompiled agent over its dependencies (`threadline.assembly` builds them from
    settings). `model` may be a chat model or a zero-argument factory, created on first use."""
    model_factory = (lambda: model) if isinstance(model, BaseChatModel) else model
    nodes = AgentNodes(
        policy=policy, counter=counter, model_factory=model_factory, tools=tuple(tools)
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
