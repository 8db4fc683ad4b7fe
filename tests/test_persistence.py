"""Thread memory on every single-tier backend: three turns, then a fresh saver continues.

The model is the real `ChatOpenAI` talking to the local OpenAI-compatible stub, so the
assertions are about what the model actually received over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from tests.fixtures.openai_stub import OpenAIStub
from threadline.assembly import make_graph
from threadline.checkpointers import open_checkpointer
from threadline.dev.services import DYNAMODB_LOCAL_CREDENTIALS
from threadline.settings import Settings

FACTS = [
    "My name is Ada and I keep bees.",
    "The hive is called Hexagon.",
    "We harvested 12 kg of honey in June.",
]
FOLLOW_UP = "What did I tell you so far?"
THREADLINE = str(Path(sys.executable).parent / "threadline")


def backend_settings(
    backend: str, tmp_path: Path, postgres_db_url: str, redis_url: str, request: Any = None
) -> dict[str, str]:
    """The THREADLINE_* (and for the cloud stores' emulators, their own) variables that
    select this backend."""
    env = {"THREADLINE_CHECKPOINTER": backend, "THREADLINE_MODEL": "openai:gpt-4o-mini"}
    if backend == "sqlite":
        env["THREADLINE_SQLITE_PATH"] = str(tmp_path / "threads.sqlite")
    if backend == "postgres":
        env["THREADLINE_POSTGRES_URL"] = postgres_db_url
    if backend == "redis":
        env["THREADLINE_REDIS_URL"] = redis_url
    if backend == "dynamodb":  # its server starts only for the tests that ask for it
        env["THREADLINE_DYNAMODB_ENDPOINT_URL"] = request.getfixturevalue("dynamodb_endpoint")
        env["THREADLINE_DYNAMODB_TABLE"] = f"persist-{uuid.uuid4().hex[:8]}"
        env.update(DYNAMODB_LOCAL_CREDENTIALS)
    if backend == "firestore":
        env["FIRESTORE_EMULATOR_HOST"] = request.getfixturevalue("firestore_host")
        env["THREADLINE_FIRESTORE_PROJECT"] = "threadline-test"
        env["THREADLINE_FIRESTORE_COLLECTION"] = f"persist{uuid.uuid4().hex[:8]}"
    return env


def settings_from(env: dict[str, str]) -> Settings:
    values = {
        key.removeprefix("THREADLINE_").lower(): value
        for key, value in env.items()
        if key.startswith("THREADLINE_")
    }
    return Settings(**values)  # type: ignore[arg-type]


def user_texts(stub: OpenAIStub) -> list[str]:
    return stub.last_request.texts("user")


@pytest.mark.parametrize(
    "backend", ["memory", "sqlite", "postgres", "redis", "dynamodb", "firestore"]
)
async def test_thread_survives_a_new_saver(
    backend: str,
    tmp_path: Path,
    postgres_db_url: str,
    redis_url: str,
    openai_stub: OpenAIStub,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    env = backend_settings(backend, tmp_path, postgres_db_url, redis_url, request)
    for key, value in {**openai_stub.env(), **env}.items():
        if not key.startswith("THREADLINE_"):
            monkeypatch.setenv(key, value)
    settings = settings_from(env)
    thread_id = f"persist-{backend}-{uuid.uuid4().hex[:8]}"  # Redis is shared by the session
    config = {"configurable": {"thread_id": thread_id}}

    async with open_checkpointer(settings) as saver:
        graph = make_graph(saver, settings)
        for fact in FACTS:
            await graph.ainvoke({"messages": [HumanMessage(fact)]}, config)
        assert user_texts(openai_stub) == FACTS
        assert openai_stub.last_request.texts("assistant") == [f"echo: {f}" for f in FACTS[:2]]

        if backend == "memory":  # a memory saver lives and dies with its process
            again = make_graph(saver, settings)
            await again.ainvoke({"messages": [HumanMessage(FOLLOW_UP)]}, config)

    if backend in ("sqlite", "postgres", "dynamodb", "firestore"):
        result = subprocess.run(
            [THREADLINE, "chat", thread_id],
            input=f"{FOLLOW_UP}\n",
            env={**os.environ, **env, **openai_stub.env()},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"echo: {FOLLOW_UP}" in result.stdout
    elif backend == "redis":
        async with open_checkpointer(settings) as fresh_saver:
            await make_graph(fresh_saver, settings).ainvoke(
                {"messages": [HumanMessage(FOLLOW_UP)]}, config
            )

    assert user_texts(openai_stub) == [*FACTS, FOLLOW_UP]
    if backend != "memory":
        async with open_checkpointer(settings) as reader:
            state = await make_graph(reader, settings).aget_state(config)
        contents = [m.content for m in state.values["messages"]]
        expected = [text for fact in [*FACTS, FOLLOW_UP] for text in (fact, f"echo: {fact}")]
        assert contents == expected
