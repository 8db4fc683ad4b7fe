"""Retried turns on every backend: receipts of their own, with a lifetime, gone with the thread.

A retry is recognised by its `Idempotency-Key` or by its message id; the model (the real
`ChatOpenAI` against the stub) is called once per stored turn, so "not run again" is counted
at the HTTP level.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import BACKENDS, turn_result


def turn(thread_id: str, text: str, message_id: str | None = None) -> dict[str, Any]:
    message = {"type": "human", "content": text, **({"id": message_id} if message_id else {})}
    return {"input": {"messages": [message]}, "config": {"configurable": {"thread_id": thread_id}}}


async def transcript(client: httpx.AsyncClient, thread_id: str) -> list[str]:
    response = await client.get(f"/threads/{thread_id}")
    return [m["content"] for m in response.json()["messages"]] if response.is_success else []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_retry_turns_later_gets_the_first_result_on_every_backend(
    backend: str, served: Any, openai_stub: OpenAIStub
) -> None:
    thread = f"t-{uuid.uuid4().hex[:8]}"  # the Redis Stack server is shared by the session
    key = {"Idempotency-Key": "K"}
    async with served(backend) as client:
        first = await client.post("/agent/invoke", json=turn(thread, "book a table"), headers=key)
        by_id = await client.post("/agent/invoke", json=turn(thread, "and wine", "m-2"))
        for n in range(5):
            assert (await client.post("/agent/invoke", json=turn(thread, f"n{n}"))).is_success
        calls = len(openai_stub.completions)

        again = await client.post("/agent/invoke", json=turn(thread, "book a table"), headers=key)
        streamed = await client.post(
            "/agent/stream", json=turn(thread, "book a table"), headers=key
        )
        id_again = await client.post("/agent/invoke", json=turn(thread, "and wine", "m-2"))
        other = await client.post("/agent/invoke", json=turn(thread, "no, a sofa"), headers=key)
        other_id = await client.post("/agent/invoke", json=turn(thread, "beer", "m-2"))

        assert again.status_code == 200 and turn_result(again) == turn_result(first)
        assert "echo: book a table" in streamed.text and "n4" not in streamed.text
        assert id_again.status_code == 200
        assert turn_result(id_again) == turn_result(by_id)
        assert other.status_code == 422, other.text
        assert other_id.status_code == 409, other_id.text
        assert len(openai_stub.completions) == calls
        texts = await transcript(client, thread)
    assert texts.count("book a table") == texts.count("and wine") == 1
    assert len(texts) == 14


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
async def test_a_key_is_forgotten_after_its_lifetime(
    backend: str, served: Any, openai_stub: OpenAIStub
) -> None:
    """Past `THREADLINE_IDEMPOTENCY_TTL_SECONDS` the same key is a new request."""
    key = {"Idempotency-Key": "short-lived"}
    async with served(backend, idempotency_ttl_seconds=1) as client:
        first = await client.post("/agent/invoke", json=turn("t", "ping"), headers=key)
        assert (await client.post("/agent/invoke", json=turn("t", "ping"), headers=key)).is_success
        assert len(openai_stub.completions) == 1
        await asyncio.sleep(1.2)
        later = await client.post("/agent/invoke", json=turn("t", "ping"), headers=key)
        assert first.status_code == later.status_code == 200
        assert len(openai_stub.completions) == 2
        assert await transcript(client, "t") == ["ping", "echo: ping"] * 2


async def test_a_receipt_outlives_the_checkpoint_it_names(
    served: Any, openai_stub: OpenAIStub, postgres_db_url: str
) -> None:
    """Pruned history (retention) must not turn a retry into a second copy of the turn."""
    key = {"Idempotency-Key": "K"}
    async with served("postgres") as client:
        await client.post("/agent/invoke", json=turn("t", "first"), headers=key)
        with psycopg.connect(postgres_db_url, autocommit=True) as conn:
            (first_turn,) = conn.execute(
                "SELECT array_agg(checkpoint_id) FROM checkpoints"
            ).fetchone()
            await client.post("/agent/invoke", json=turn("t", "second"))
            conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = ANY(%s)", (first_turn,))
        retried = await client.post("/agent/invoke", json=turn("t", "first"), headers=key)
    assert retried.status_code == 409, retried.text
    assert "pruned" in retried.json()["detail"]
    assert len(openai_stub.completions) == 2


async def test_receipts_hold_no_key_and_go_with_their_thread(
    served: Any, openai_stub: OpenAIStub, postgres_db_url: str
) -> None:
    key = {"Idempotency-Key": "customer-4711-order"}
    async with served("postgres") as client:
        await client.post("/agent/invoke", json=turn("t", "hello", "msg-secret-id"), headers=key)
        with psycopg.connect(postgres_db_url) as conn:
            rows = conn.execute("SELECT * FROM threadline_turn_receipts").fetchall()
            metadata = conn.execute("SELECT metadata::text FROM checkpoints").fetchall()
        assert len(rows) == 2
        stored = repr(rows) + repr(metadata)
        assert "customer-4711" not in stored and "msg-secret-id" not in repr(rows)

        assert (await client.delete("/threads/t")).status_code == 200
        with psycopg.connect(postgres_db_url) as conn:
            left = conn.execute("SELECT count(*) FROM threadline_turn_receipts").fetchone()
        assert left == (0,)
        again = await client.post("/agent/invoke", json=turn("t", "hello"), headers=key)
    assert again.status_code == 200
    assert len(openai_stub.completions) == 2
