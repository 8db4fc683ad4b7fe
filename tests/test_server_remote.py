"""LangServe clients over real HTTP: memory across turns, streaming, events and batch.

The server runs in a thread on a free port with the real `ChatOpenAI` pointed at the OpenAI stub,
so every assertion about memory is about what the model received over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langserve import RemoteRunnable

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import live_server, settings_for


@pytest.fixture
def stub_env(openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> OpenAIStub:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    return openai_stub


@pytest.fixture
def base_url(stub_env: OpenAIStub, tmp_path: Path) -> Iterator[str]:
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer="sqlite",
        sqlite_path=tmp_path / "threads.sqlite",
    )
    with live_server(settings) as url:
        yield url


@pytest.fixture
async def clients() -> AsyncIterator[list[RemoteRunnable]]:
    """Closes each client's connections on this event loop (LangServe would do it at exit,
    on a new loop, where the connections no longer work)."""
    made: list[RemoteRunnable] = []
    yield made
    for client in made:
        await client.async_client.aclose()
        client.sync_client.close()


@pytest.fixture
def agent(base_url: str, clients: list[RemoteRunnable]) -> Callable[..., RemoteRunnable]:
    def make(**headers: str) -> RemoteRunnable:
        client = RemoteRunnable(f"{base_url}/agent", headers=headers or None, timeout=30)
        clients.append(client)
        return client

    return make


Agent = Callable[..., RemoteRunnable]


def on(thread_id: str) -> dict[str, dict[str, str]]:
    return {"configurable": {"thread_id": thread_id}}


async def test_three_turns_keep_memory(agent: Agent, stub_env: OpenAIStub) -> None:
    remote = agent()
    facts = ["My name is Ada.", "I keep bees.", "What do you know about me?"]
    for fact in facts:
        output = await remote.ainvoke({"messages": [HumanMessage(fact)]}, on("ada"))
    # A turn answers with what it added (the transcript is GET /threads/{id}).
    assert [type(m) for m in output["messages"]] == [HumanMessage, AIMessage]
    assert [m.content for m in output["messages"]] == [facts[-1], f"echo: {facts[-1]}"]
    assert output["thread"]["message_count"] == 6 and output["thread"]["title"] == facts[0]
    assert output["telemetry"]["transcript_messages"] == 5
    assert stub_env.last_request.texts("user") == facts
    assert stub_env.last_request.texts("assistant") == [f"echo: {f}" for f in facts[:2]]
    assert len(stub_env.completions) == 3


async def test_thread_header_is_enough(agent: Agent, stub_env: OpenAIStub) -> None:
    remote = agent(**{"X-Thread-Id": "by-header"})
    await remote.ainvoke({"messages": [HumanMessage("first")]})
    await remote.ainvoke({"messages": [HumanMessage("second")]})
    assert stub_env.last_request.texts("user") == ["first", "second"]


async def test_stream_yields_tokens_then_the_invoke_result(
    agent: Agent, stub_env: OpenAIStub
) -> None:
    remote = agent()
    await remote.ainvoke({"messages": [HumanMessage("one")]}, on("streamed"))
    reply = "two " * 20
    chunks = [c async for c in remote.astream({"messages": [HumanMessage(reply)]}, on("streamed"))]
    *tokens, final = chunks
    pieces = [m.content for chunk in tokens for m in chunk["messages"]]
    assert all(isinstance(m, AIMessageChunk) for chunk in tokens for m in chunk["messages"])
    assert len(pieces) > 3 and "".join(pieces) == f"echo: {reply}"  # the model's own tokens
    assert [m.content for m in final["messages"]] == [reply, f"echo: {reply}"]
    assert final["thread"]["message_count"] == 4
    assert stub_env.last_request.texts("user") == ["one", reply]


async def test_stream_events_show_the_model_run(agent: Agent, stub_env: OpenAIStub) -> None:
    remote = agent()
    events = [
        e
        async for e in remote.astream_events(
            {"messages": [HumanMessage("hello events")]}, on("events"), version="v2"
        )
    ]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    model_ends = [e for e in events if e["event"] == "on_chat_model_end"]
    assert len(model_ends) == 1
    assert model_ends[0]["data"]["output"].content == "echo: hello events"
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(e["data"]["chunk"].content for e in streamed) == "echo: hello events"
    second = await remote.ainvoke({"messages": [HumanMessage("again")]}, on("events"))
    assert second["thread"]["message_count"] == 4


async def test_batch_runs_each_input_on_its_own_thread(base_url: str, agent: Agent) -> None:
    remote = agent()
    await remote.ainvoke({"messages": [HumanMessage("I am on thread A")]}, on("batch-a"))
    outputs = await remote.abatch(
        [{"messages": [HumanMessage("second on A")]}, {"messages": [HumanMessage("first on B")]}],
        [on("batch-a"), on("batch-b")],
    )
    assert [m.content for m in outputs[0]["messages"]] == ["second on A", "echo: second on A"]
    assert [m.content for m in outputs[1]["messages"]] == ["first on B", "echo: first on B"]
    threads = {
        thread: httpx.get(f"{base_url}/threads/{thread}", timeout=10).json()
        for thread in ("batch-a", "batch-b")
    }
    assert len(threads["batch-a"]["messages"]) == 4
    assert [m["content"] for m in threads["batch-b"]["messages"]] == [
        "first on B",
        "echo: first on B",
    ]


async def test_batch_cannot_run_one_thread_twice(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/agent/batch",
        json={
            "inputs": [
                {"messages": [{"type": "human", "content": "x"}]},
                {"messages": [{"type": "human", "content": "y"}]},
            ],
            "config": on("same"),
        },
        timeout=10,
    )
    assert response.status_code == 422
    assert "one turn per thread" in response.json()["detail"]
