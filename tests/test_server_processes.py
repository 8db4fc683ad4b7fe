"""Real `threadline serve` processes sharing one store: concurrent turns and crashes.

Two servers take 20 turns on one thread at once; the thread lock lives in Postgres, so only one
turn runs at a time across both processes and the rest wait, then get 409. A server killed with
SIGKILL (mid-turn, even) loses nothing it acknowledged and leaves no half-applied turn.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import THREADLINE, ServerProcessFactory
from threadline.dev.services import DYNAMODB_LOCAL_CREDENTIALS

MODEL_DELAY_SECONDS = 0.3
LOCK_WAIT_SECONDS = 1.5
EMULATOR_LOCK_WAIT_SECONDS = 5.0
TURNS = 20


def backend_env(backend: str, postgres_url: str, redis_url: str, stub: OpenAIStub) -> dict:
    env = {
        "THREADLINE_CHECKPOINTER": backend,
        "THREADLINE_POSTGRES_URL": postgres_url,
        "THREADLINE_MODEL": "openai:gpt-4o-mini",
        "THREADLINE_TURN_LOCK_TIMEOUT_SECONDS": str(LOCK_WAIT_SECONDS),
        **stub.env(),
    }
    if backend == "tiered":
        env["THREADLINE_REDIS_URL"] = redis_url
    return env


def turn(text: str, thread_id: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


def contents(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages]


@pytest.mark.parametrize("backend", ["postgres", "tiered", "dynamodb", "firestore"])
async def test_twenty_concurrent_turns_on_two_servers(
    backend: str,
    server_process: ServerProcessFactory,
    openai_stub: OpenAIStub,
    postgres_db_url: str,
    plain_redis_url: str,
    request: pytest.FixtureRequest,
) -> None:
    env = backend_env(backend, postgres_db_url, plain_redis_url, openai_stub)
    if backend in ("dynamodb", "firestore"):  # emulators are slower: a waiter waits longer
        env["THREADLINE_TURN_LOCK_TIMEOUT_SECONDS"] = str(EMULATOR_LOCK_WAIT_SECONDS)
    if backend == "dynamodb":  # the lock is a conditional-write lease in the table
        env.update(
            THREADLINE_DYNAMODB_ENDPOINT_URL=request.getfixturevalue("dynamodb_endpoint"),
            THREADLINE_DYNAMODB_TABLE=f"crowded-{uuid.uuid4().hex[:8]}",
            **DYNAMODB_LOCAL_CREDENTIALS,
        )
    if backend == "firestore":  # the lock is a lease document taken with preconditions
        env.update(
            FIRESTORE_EMULATOR_HOST=request.getfixturevalue("firestore_host"),
            THREADLINE_FIRESTORE_PROJECT="threadline-test",
            THREADLINE_FIRESTORE_COLLECTION=f"crowded{uuid.uuid4().hex[:8]}",
        )
    servers = [server_process(env, ready=False) for _ in range(2)]
    for server in servers:
        server.wait_ready()
    thread = f"crowded-{uuid.uuid4().hex[:8]}"  # Redis is shared by the session's tests

    async with httpx.AsyncClient(timeout=60) as client:
        for server in servers:  # first turns pay for imports and connections: not measured here
            warm = await client.post(f"{server.url}/agent/invoke", json=turn("warm up", "warm"))
            assert warm.status_code == 200, warm.text
        openai_stub.clear()
        openai_stub.delay_when(lambda request: True, MODEL_DELAY_SECONDS)
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{servers[n % 2].url}/agent/invoke", json=turn(f"turn-{n:02d}", thread)
                )
                for n in range(TURNS)
            )
        )
        final = (await client.get(f"{servers[0].url}/threads/{thread}")).json()["messages"]

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, [r.text for r in responses if r.status_code >= 500]
    accepted = [f"turn-{n:02d}" for n, status in enumerate(statuses) if status == 200]
    assert 2 <= len(accepted) < TURNS
    transcript = contents(final)
    humans, replies = transcript[0::2], transcript[1::2]
    assert sorted(humans) == sorted(accepted)  # every accepted turn exactly once, nothing else
    assert replies == [f"echo: {h}" for h in humans]  # each reply answers its own turn
    for response in responses:
        if response.status_code == 200:  # each turn sits where it said: no fork, no reorder
            output = response.json()["output"]
            added, count = contents(output["messages"]), output["thread"]["message_count"]
            assert transcript[count - len(added) : count] == added
        else:
            assert "busy" in response.json()["detail"]
    assert len(openai_stub.completions) == len(accepted)  # refused turns never reached the model


@pytest.mark.parametrize("backend", ["postgres", "tiered"])
async def test_killed_server_continues_the_thread_after_restart(
    backend: str,
    server_process: ServerProcessFactory,
    openai_stub: OpenAIStub,
    postgres_db_url: str,
    plain_redis_url: str,
) -> None:
    env = backend_env(backend, postgres_db_url, plain_redis_url, openai_stub)
    thread = f"survivor-{uuid.uuid4().hex[:8]}"  # Redis is shared by the session's tests
    first = server_process(env)
    async with httpx.AsyncClient(timeout=60) as client:
        for text in ("my name is Ada", "I keep bees"):
            response = await client.post(f"{first.url}/agent/invoke", json=turn(text, thread))
            assert response.status_code == 200

        openai_stub.delay_when(lambda request: request.last_user_text == "never answered", 30)
        in_flight = asyncio.create_task(
            client.post(f"{first.url}/agent/invoke", json=turn("never answered", thread))
        )
        deadline = time.monotonic() + 20
        while not any(r.last_user_text == "never answered" for r in openai_stub.completions):
            assert time.monotonic() < deadline, "the in-flight turn never reached the model"
            await asyncio.sleep(0.05)
        first.kill()
        with pytest.raises(httpx.TransportError):
            await in_flight

        second = server_process(env)
        response = await client.post(
            f"{second.url}/agent/invoke", json=turn("what do I keep?", thread)
        )
        assert response.status_code == 200, response.text
        stored = (await client.get(f"{second.url}/threads/{thread}")).json()

    assert contents(stored["messages"]) == [
        "my name is Ada",
        "echo: my name is Ada",
        "I keep bees",
        "echo: I keep bees",
        "what do I keep?",
        "echo: what do I keep?",
    ]
    assert openai_stub.last_request.texts("user") == [
        "my name is Ada",
        "I keep bees",
        "what do I keep?",
    ]


def test_several_workers_need_a_shared_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [THREADLINE, "serve", "--workers", "2"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")},
            "THREADLINE_MODEL": "fake",
            "THREADLINE_CHECKPOINTER": "sqlite",
            "THREADLINE_SQLITE_PATH": str(tmp_path / "t.sqlite"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "needs a shared store" in done.stderr
    assert "Traceback" not in done.stderr
