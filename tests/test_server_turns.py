"""A turn is stored whole or not at all, once, and one at a time per thread.

The model is the real `ChatOpenAI` against the OpenAI stub, so "the model was not called again"
is counted at the HTTP level. The store is Postgres, as in a multi-replica deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import asgi_client, settings_for, turn_result


@pytest.fixture
async def client(
    openai_stub: OpenAIStub, postgres_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer="postgres",
        postgres_url=postgres_db_url,
        turn_lock_timeout_seconds=0.3,
    )
    async with asgi_client(settings) as client:
        yield client


def turn(text: str, thread_id: str = "t", message_id: str | None = None) -> dict[str, object]:
    message: dict[str, str] = {"type": "human", "content": text}
    if message_id:
        message["id"] = message_id
    return {
        "input": {"messages": [message]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


async def transcript(client: httpx.AsyncClient, thread_id: str = "t") -> list[str]:
    response = await client.get(f"/threads/{thread_id}")
    if response.status_code == 404:
        return []
    return [m["content"] for m in response.json()["messages"]]


async def test_a_retried_idempotency_key_returns_the_first_result(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    key = {"Idempotency-Key": "order-7"}
    first = await client.post("/agent/invoke", json=turn("book a table"), headers=key)
    retried = await client.post("/agent/invoke", json=turn("book a table"), headers=key)
    assert first.status_code == retried.status_code == 200
    assert turn_result(retried) == turn_result(first)
    assert len(openai_stub.completions) == 1
    assert await transcript(client) == ["book a table", "echo: book a table"]

    await client.post("/agent/invoke", json=turn("and a taxi"))
    late_retry = await client.post("/agent/invoke", json=turn("book a table"), headers=key)
    assert turn_result(late_retry) == turn_result(first)
    assert len(openai_stub.completions) == 2
    streamed = await client.post("/agent/stream", json=turn("book a table"), headers=key)
    assert "echo: book a table" in streamed.text and "taxi" not in streamed.text
    assert len(openai_stub.completions) == 2
    assert len(await transcript(client)) == 4


async def test_a_retry_many_turns_later_still_returns_the_first_result(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    """Past the transcript's snapshots (which used to delete the checkpoint holding the key)."""
    key = {"Idempotency-Key": "early"}
    first = await client.post("/agent/invoke", json=turn("the first one"), headers=key)
    for n in range(14):
        await client.post("/agent/invoke", json=turn(f"filler {n}"))
    calls = len(openai_stub.completions)
    late = await client.post("/agent/invoke", json=turn("the first one"), headers=key)
    assert late.status_code == 200
    assert turn_result(late) == turn_result(first)
    assert len(openai_stub.completions) == calls
    assert (await transcript(client)).count("the first one") == 1


async def test_a_key_reused_for_a_different_request_is_422(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    key = {"Idempotency-Key": "order-8"}
    assert (await client.post("/agent/invoke", json=turn("one"), headers=key)).status_code == 200
    other = await client.post("/agent/invoke", json=turn("something else"), headers=key)
    assert other.status_code == 422, other.text
    assert "different request" in other.json()["detail"]
    assert len(openai_stub.completions) == 1
    assert await transcript(client) == ["one", "echo: one"]


async def test_a_resent_message_id_is_not_added_twice(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    first = await client.post("/agent/invoke", json=turn("hello", message_id="msg-1"))
    again = await client.post("/agent/invoke", json=turn("hello", message_id="msg-1"))
    assert turn_result(again) == turn_result(first)
    assert len(openai_stub.completions) == 1
    await client.post("/agent/invoke", json=turn("next", message_id="msg-2"))
    assert await transcript(client) == ["hello", "echo: hello", "next", "echo: next"]


async def test_a_failed_model_call_leaves_the_thread_as_it_was(
    client: httpx.AsyncClient, openai_stub: OpenAIStub
) -> None:
    await client.post("/agent/invoke", json=turn("first"))
    history_before = (await client.get("/threads/t/history")).json()["checkpoints"]
    with openai_stub.fail_when(lambda request: True, status=500):
        failed = await client.post("/agent/invoke", json=turn("doomed"))
    assert failed.status_code == 502
    assert "model call failed" in failed.json()["detail"]
    assert await transcript(client) == ["first", "echo: first"]
    assert (await client.get("/threads/t/history")).json()["checkpoints"] == history_before

    await client.post("/agent/invoke", json=turn("second"))
    assert openai_stub.last_request.texts("user") == ["first", "second"]
    assert await transcript(client) == ["first", "echo: first", "second", "echo: second"]


@pytest.mark.parametrize("backend", ["postgres", "redis", "sqlite"])
async def test_a_second_turn_on_a_busy_thread_gets_409(
    backend: str,
    openai_stub: OpenAIStub,
    postgres_db_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each backend's lock: Postgres advisory lock, Redis lease, in-process lock for SQLite."""
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    store = {
        "postgres": {"postgres_url": postgres_db_url},
        "redis": {"redis_url": redis_url},
        "sqlite": {"sqlite_path": tmp_path / "threads.sqlite"},
    }[backend]
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer=backend,
        turn_lock_timeout_seconds=0.3,
        **store,
    )
    openai_stub.delay_when(lambda request: request.last_user_text == "slow one", 1.5)
    thread = f"busy-{uuid.uuid4().hex[:8]}"  # the Redis server is shared by the session
    async with asgi_client(settings) as client:
        slow = asyncio.create_task(client.post("/agent/invoke", json=turn("slow one", thread)))
        await asyncio.to_thread(openai_stub.wait_for_requests, 1)
        blocked = await client.post("/agent/invoke", json=turn("impatient", thread))
        deleting = await client.delete(f"/threads/{thread}")
        other = await client.post("/agent/invoke", json=turn("elsewhere", thread_id="other"))
        assert not slow.done()
        assert blocked.status_code == 409
        assert "busy" in blocked.json()["detail"]
        assert deleting.status_code == 409
        assert other.status_code == 200
        assert (await slow).status_code == 200
        assert await transcript(client, thread) == ["slow one", "echo: slow one"]
        after = await client.post("/agent/invoke", json=turn("now it is free", thread))
        assert after.status_code == 200
    assert len(openai_stub.completions) == 3


COUNT_ROWS = {
    database: f"SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM {writes})"
    for database, writes in (("postgres", "checkpoint_writes"), ("sqlite", "writes"))
}
REFUSE = {
    "postgres": """
        CREATE FUNCTION refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'going away' USING ERRCODE = '57P01'; END $$;
        CREATE TRIGGER refuse_checkpoint BEFORE INSERT ON checkpoints
            FOR EACH ROW EXECUTE FUNCTION refuse_checkpoint();
    """,
    "sqlite": """
        CREATE TRIGGER refuse_checkpoint BEFORE INSERT ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'refused'); END;
    """,
}
ALLOW = {
    "postgres": "DROP TRIGGER refuse_checkpoint ON checkpoints",
    "sqlite": "DROP TRIGGER refuse_checkpoint",
}


@pytest.mark.parametrize("backend", ["postgres", "tiered", "sqlite"])
async def test_a_turn_the_store_refuses_at_its_commit_leaves_nothing_behind(
    backend: str,
    openai_stub: OpenAIStub,
    postgres_db_url: str,
    plain_redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn stores several rows (the transcript's new messages as writes on the previous
    checkpoint, then the new checkpoint): the store failing at the checkpoint must take the
    writes with it, leaving no part of the refused turn stored."""
    import sqlite3

    import psycopg

    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    sqlite_path = tmp_path / "threads.sqlite"
    stores: dict[str, object] = {
        "postgres": {"postgres_url": postgres_db_url},
        "tiered": {"postgres_url": postgres_db_url, "redis_url": plain_redis_url},
        "sqlite": {"sqlite_path": sqlite_path},
    }[backend]  # type: ignore[assignment]
    settings = settings_for(model="openai:gpt-4o-mini", checkpointer=backend, **stores)
    database = "sqlite" if backend == "sqlite" else "postgres"

    def rows_after(sql: str = "") -> tuple[int, ...]:
        """Run `sql` on the store's database; the checkpoint and write rows it then holds."""
        if database == "sqlite":
            with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
                conn.executescript(sql)
                return tuple(conn.execute(COUNT_ROWS[database]).fetchone())
        with psycopg.connect(postgres_db_url, autocommit=True) as conn:
            if sql:
                conn.execute(sql)
            return tuple(conn.execute(COUNT_ROWS[database]).fetchone() or ())

    thread = f"refused-{uuid.uuid4().hex[:8]}"
    async with asgi_client(settings) as client:
        assert (await client.post("/agent/invoke", json=turn("my name is Ada", thread))).is_success
        rows_before = rows_after(REFUSE[database])
        try:
            response = await client.post("/agent/invoke", json=turn("I keep bees", thread))
            refused = response.status_code
        except sqlite3.IntegrityError:  # answered 500; the in-process transport re-raises it
            refused = 500
        assert refused >= 500
        assert rows_after(ALLOW[database]) == rows_before  # not a row of the refused turn
        answered = await client.post("/agent/invoke", json=turn("what do I keep?", thread))
        assert answered.status_code == 200, answered.text
        assert await transcript(client, thread) == [
            "my name is Ada",
            "echo: my name is Ada",
            "what do I keep?",
            "echo: what do I keep?",
        ]
    assert openai_stub.last_request.texts("user") == ["my name is Ada", "what do I keep?"]
