"""The OpenAI stub, exercised through the real ``ChatOpenAI`` client over HTTP.

If these pass, other tests can trust that the stub speaks the wire format the real client
expects and rejects the message sequences the real API rejects.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.fixtures.openai_stub import (
    OpenAIStub,
    RecordedRequest,
    Reply,
    ToolCall,
    validate_messages,
)


@tool
def get_weather(city: str) -> str:
    """Return the weather for a city."""
    return f"sunny in {city}"


def make_model(stub: OpenAIStub, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("max_retries", 0)
    key = SecretStr("test")
    return ChatOpenAI(model="gpt-4o-mini", base_url=stub.base_url, api_key=key, **kwargs)


def two_calls() -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[
            {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_a"},
            {"name": "get_weather", "args": {"city": "Rome"}, "id": "call_b"},
        ],
    )


# --------------------------------------------------------------------------- happy paths


def test_default_echo_and_recorded_request(openai_stub: OpenAIStub) -> None:
    result = make_model(openai_stub).invoke(
        [SystemMessage("be brief"), HumanMessage("hello there")]
    )

    assert result.content == "echo: hello there"
    req = openai_stub.last_request
    assert req.path == "/v1/chat/completions"
    assert req.model == "gpt-4o-mini"
    assert req.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert req.headers["authorization"] == "Bearer test"
    assert req.status == 200
    assert result.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] > 0


def test_invoke_returns_scripted_text(openai_stub: OpenAIStub) -> None:
    openai_stub.responder = lambda req: Reply.text(f"{len(req.messages)} messages seen")

    assert make_model(openai_stub).invoke("hi").content == "1 messages seen"


def test_enqueued_replies_come_before_responder(openai_stub: OpenAIStub) -> None:
    openai_stub.enqueue("first", Reply.text("second"))
    model = make_model(openai_stub)

    assert [model.invoke("x").content for _ in range(3)] == ["first", "second", "echo: x"]


def test_stream_chunks_concatenate_to_reply(openai_stub: OpenAIStub) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    openai_stub.responder = lambda _req: text

    chunks = list(make_model(openai_stub, stream_usage=True).stream("go"))

    assert "".join(str(c.content) for c in chunks) == text
    assert sum(1 for c in chunks if c.content) > 2
    req = openai_stub.last_request
    assert req.stream and req.body["stream_options"] == {"include_usage": True}
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0


async def test_async_invoke_and_stream(openai_stub: OpenAIStub) -> None:
    model = make_model(openai_stub)

    assert (await model.ainvoke("async")).content == "echo: async"
    parts = [str(c.content) async for c in model.astream("streamed")]
    assert "".join(parts) == "echo: streamed"


def test_scripted_tool_calls_become_ai_message_tool_calls(openai_stub: OpenAIStub) -> None:
    openai_stub.enqueue(Reply.tools(("get_weather", {"city": "Paris"}), "get_weather"))
    model = make_model(openai_stub).bind_tools([get_weather])

    result = model.invoke("weather?")

    assert isinstance(result, AIMessage)
    assert result.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"},
        {"name": "get_weather", "args": {}, "id": "call_2", "type": "tool_call"},
    ]
    assert result.response_metadata["finish_reason"] == "tool_calls"
    assert openai_stub.last_request.tool_names == ["get_weather"]


def test_streamed_tool_calls_reassemble(openai_stub: OpenAIStub) -> None:
    openai_stub.enqueue(Reply.tools(ToolCall("get_weather", {"city": "Reykjavik"}, id="c9")))
    model = make_model(openai_stub).bind_tools([get_weather])

    chunks = list(model.stream("weather?"))
    merged: Any = chunks[0]  # AIMessageChunk; BaseMessage.__add__ is typed for prompts
    for chunk in chunks[1:]:
        merged += chunk

    assert merged.tool_calls == [
        {"name": "get_weather", "args": {"city": "Reykjavik"}, "id": "c9", "type": "tool_call"}
    ]


def test_parallel_tool_round_trip_is_accepted_and_recorded(openai_stub: OpenAIStub) -> None:
    openai_stub.enqueue(
        Reply.tools(("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})),
        "Paris and Rome are sunny.",
    )
    model = make_model(openai_stub).bind_tools([get_weather])
    history: list[Any] = [HumanMessage("weather in Paris and Rome?")]

    ai = model.invoke(history)
    history.append(ai)
    history += [get_weather.invoke(call) for call in ai.tool_calls]
    final = model.invoke(history)

    assert final.content == "Paris and Rome are sunny."
    req = openai_stub.last_request
    assert req.roles == ["user", "assistant", "tool", "tool"]
    assert req.tool_call_ids() == ["call_1", "call_2"]
    assert req.tool_result_ids() == ["call_1", "call_2"]
    assert req.texts("tool") == ["sunny in Paris", "sunny in Rome"]
    assert req.messages[1]["tool_calls"][1]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Rome"}',
    }


# --------------------------------------------------------------------------- validation over HTTP


def test_orphan_tool_message_is_rejected_with_400(openai_stub: OpenAIStub) -> None:
    messages = [HumanMessage("hi"), ToolMessage("result", tool_call_id="call_x")]

    with pytest.raises(openai.BadRequestError) as info:
        make_model(openai_stub).invoke(messages)

    assert info.value.status_code == 400
    assert info.value.body is not None
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert info.value.body["param"] == "messages"  # type: ignore[index]
    assert "must be a response to a preceeding message" in str(info.value)
    assert openai_stub.last_request.status == 400


def test_unanswered_parallel_tool_call_is_rejected(openai_stub: OpenAIStub) -> None:
    messages = [
        HumanMessage("hi"),
        two_calls(),
        ToolMessage("sunny", tool_call_id="call_a"),
    ]

    with pytest.raises(openai.BadRequestError) as info:
        make_model(openai_stub).invoke(messages)

    assert "did not have response messages: call_b" in str(info.value)


def test_explicit_parallel_sequence_is_accepted(openai_stub: OpenAIStub) -> None:
    messages = [
        HumanMessage("hi"),
        two_calls(),
        ToolMessage("sunny", tool_call_id="call_b"),
        ToolMessage("rainy", tool_call_id="call_a"),
        HumanMessage("thanks"),
    ]

    assert make_model(openai_stub).invoke(messages).content == "echo: thanks"
    assert openai_stub.last_request.tool_result_ids() == ["call_b", "call_a"]


# --------------------------------------------------------------------------- failures and delays


def test_fail_next_raises_then_recovers(openai_stub: OpenAIStub) -> None:
    model = make_model(openai_stub)
    openai_stub.fail_next(1)

    with pytest.raises(openai.InternalServerError):
        model.invoke("a")
    assert model.invoke("b").content == "echo: b"
    assert [r.status for r in openai_stub.requests] == [500, 200]


def test_rate_limit_failure_maps_to_rate_limit_error(openai_stub: OpenAIStub) -> None:
    openai_stub.fail_next(1, status=429, message="slow down")

    with pytest.raises(openai.RateLimitError, match="slow down"):
        make_model(openai_stub).invoke("a")


def test_client_retries_pass_through_injected_failures(openai_stub: OpenAIStub) -> None:
    openai_stub.fail_next(2, status=503)

    assert make_model(openai_stub, max_retries=2).invoke("retry").content == "echo: retry"
    assert [r.status for r in openai_stub.requests] == [503, 503, 200]


def test_fail_when_predicate_and_removal(openai_stub: OpenAIStub) -> None:
    model = make_model(openai_stub)

    def is_summary(req: RecordedRequest) -> bool:
        return "summarize" in req.last_user_text

    rule = openai_stub.fail_when(is_summary, status=500)
    assert model.invoke("chat").content == "echo: chat"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            model.invoke("summarize this")
    assert rule.hits == 2

    rule.remove()
    assert model.invoke("summarize this").content == "echo: summarize this"


def test_scripted_failure_reply(openai_stub: OpenAIStub) -> None:
    openai_stub.enqueue(Reply.failure(400, "bad thing"))

    with pytest.raises(openai.BadRequestError, match="bad thing"):
        make_model(openai_stub).invoke("x")


def test_responder_exception_surfaces_as_500(openai_stub: OpenAIStub) -> None:
    def broken(_req: RecordedRequest) -> Reply:
        raise RuntimeError("boom")

    openai_stub.responder = broken
    with pytest.raises(openai.InternalServerError, match="boom"):
        make_model(openai_stub).invoke("x")


def test_delay_when_triggers_client_timeout(openai_stub: OpenAIStub) -> None:
    with openai_stub.delay_when(lambda req: req.last_user_text == "slow", 2.0):
        model = make_model(openai_stub, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            model.invoke("slow")
        assert model.invoke("fast").content == "echo: fast"
    assert model.invoke("slow").content == "echo: slow"


def test_stop_is_prompt_and_leaks_no_threads() -> None:
    before = set(threading.enumerate())
    stub = OpenAIStub().start()
    stub.delay_when(lambda _req: True, 30.0)
    model = make_model(stub, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        model.invoke("x")
    stub.stop()  # must wake the handler still sleeping on the 30 s delay

    assert set(threading.enumerate()) - before == set()
    assert not stub.running
    with pytest.raises(openai.APIConnectionError):
        model.invoke("x")


def test_models_endpoint_and_unknown_path(openai_stub: OpenAIStub) -> None:
    with httpx.Client(base_url=openai_stub.base_url) as client:
        models = client.get("/models").json()
        missing = client.post("/responses", json={})
    assert models["object"] == "list"
    assert "gpt-4o-mini" in [m["id"] for m in models["data"]]
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_clear_and_reset(openai_stub: OpenAIStub) -> None:
    model = make_model(openai_stub)
    openai_stub.responder = lambda _req: "scripted"
    model.invoke("a")
    openai_stub.clear()
    assert openai_stub.requests == []
    assert model.invoke("b").content == "scripted"

    openai_stub.fail_next(5)
    openai_stub.reset()
    assert model.invoke("c").content == "echo: c"
    assert len(openai_stub.requests) == 1


def test_session_fixture_serves(openai_stub_session: OpenAIStub) -> None:
    openai_stub_session.reset()
    assert openai_stub_session.chat_model().invoke("s").content == "echo: s"


# --------------------------------------------------------------------------- validate_messages


def _assistant_calls(*ids: str) -> dict[str, Any]:
    calls = [
        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _tool(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "ok"}


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    "messages",
    [
        [USER],
        [{"role": "system", "content": "s"}, USER, {"role": "assistant", "content": "a"}],
        [USER, _assistant_calls("a"), _tool("a")],
        [USER, _assistant_calls("a", "b"), _tool("b"), _tool("a"), USER],
        [USER, _assistant_calls("a"), _tool("a"), _assistant_calls("b"), _tool("b")],
        [{"role": "developer", "content": "d"}, USER, {"role": "assistant", "content": "a"}],
    ],
    ids=["user", "plain", "single-tool", "parallel-any-order", "consecutive-rounds", "developer"],
)
def test_validate_messages_accepts(messages: list[dict[str, Any]]) -> None:
    assert validate_messages(messages) is None


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "too short"),
        ([{"content": "no role"}], "messages[0].role"),
        ([{"role": "robot", "content": "x"}], "Invalid value: 'robot'"),
        ([USER, _tool("a")], "must be a response"),
        ([_tool("a"), USER], "must be a response"),
        ([USER, _assistant_calls("a"), _tool("zzz")], "must be a response"),
        ([USER, _assistant_calls("a"), {"role": "tool", "content": "x"}], "tool_call_id"),
        ([USER, _assistant_calls("a")], "did not have response messages: a"),
        ([USER, _assistant_calls("a", "b"), _tool("a")], "did not have response messages: b"),
        ([USER, _assistant_calls("a", "b"), _tool("a"), USER, _tool("b")], "response messages"),
        ([USER, _assistant_calls("a"), _tool("a"), USER, _tool("a")], "must be a response"),
        ([USER, _assistant_calls("a"), _assistant_calls("b"), _tool("a")], "response messages"),
        ([USER, {"role": "assistant", "tool_calls": []}], "empty array"),
        ("not a list", "expected an array"),
    ],
    ids=[
        "empty",
        "no-role",
        "bad-role",
        "orphan-after-user",
        "orphan-first",
        "unknown-id",
        "missing-tool-call-id",
        "unanswered-last",
        "partially-answered",
        "interrupted-block",
        "stale-id-after-user",
        "nested-assistant",
        "empty-tool-calls",
        "not-a-list",
    ],
)
def test_validate_messages_rejects(messages: Any, expected: str) -> None:
    error = validate_messages(messages)
    assert error is not None and expected in error
