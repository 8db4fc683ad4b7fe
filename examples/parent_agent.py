"""A parent agent that embeds threadline: arithmetic goes to a calculator node, everything else
to the threadline subgraph, which keeps the thread's memory (summary included) across runs.

    THREADLINE_MODEL=fake python examples/parent_agent.py                 # a scripted demo
    THREADLINE_MODEL=fake python examples/parent_agent.py --thread t1 "What do I collect?"

The thread persists through the configured backend (`THREADLINE_CHECKPOINTER`, SQLite by
default), so a second run with the same `--thread` continues the conversation.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import operator
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import ValidationError

from threadline.settings import Settings, SettingsError

DEMO = (
    "Hello, my name is Ada and I collect old maps.",
    "what is 12*7?",
    "What do I collect?",
)
ARITHMETIC = re.compile(r"^\s*(?:what is\s+)?(?P<expression>[\d\s.+\-*/()]+?)\s*\??\s*$", re.I)
OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def evaluate(node: ast.AST) -> float:
    """Numbers and + - * / only: the calculator never runs arbitrary code."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](evaluate(node.operand))
    raise ValueError("not arithmetic")


def arithmetic_in(text: str) -> str | None:
    match = ARITHMETIC.match(text)
    return match.group("expression").strip() if match else None


def route(state: MessagesState) -> str:
    question = str(state["messages"][-1].content)
    return "calculator" if arithmetic_in(question) else "threadline"


def calculator(state: MessagesState) -> dict[str, Any]:
    expression = arithmetic_in(str(state["messages"][-1].content)) or ""
    try:
        value = evaluate(ast.parse(expression, mode="eval"))
        answer = f"{expression} = {value:g}"
    except (SyntaxError, ValueError, ZeroDivisionError):
        answer = f"I cannot compute {expression!r}."
    return {"messages": [AIMessage(answer, name="calculator")]}


def build_parent(settings: Settings, checkpointer: BaseCheckpointSaver) -> Any:
    """The parent graph. Its checkpointer also persists the threadline subgraph's own state."""
    from threadline.embedding import make_subgraph  # reads the environment: after the check

    builder = StateGraph(MessagesState)
    builder.add_node("threadline", make_subgraph(settings))
    builder.add_node("calculator", calculator)
    builder.add_conditional_edges(START, route, ["threadline", "calculator"])
    builder.add_edge("threadline", END)
    builder.add_edge("calculator", END)
    return builder.compile(checkpointer=checkpointer)


async def chat(settings: Settings, thread_id: str, said: Sequence[str]) -> None:
    from threadline.checkpointers import open_checkpointer

    config = {"configurable": {"thread_id": thread_id}}
    async with open_checkpointer(settings) as saver:
        parent = build_parent(settings, saver)
        for text in said:
            result = await parent.ainvoke({"messages": [HumanMessage(text)]}, config)
            reply = result["messages"][-1]
            print(f"you> {text}")
            print(f"{reply.name or 'threadline'}> {reply.content}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thread", default="parent-agent-demo", help="thread to continue")
    parser.add_argument("message", nargs="*", help="messages to send (default: a short demo)")
    args = parser.parse_args(argv)
    try:
        settings = Settings().check()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        print(f"error: THREADLINE_{field.upper()}: {first['msg']}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(chat(settings, args.thread, args.message or DEMO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
