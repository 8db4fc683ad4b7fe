"""`langgraph dev` with the project's own `langgraph.json`: Studio's server, offline.

Each test runs the real CLI as a subprocess in a scratch project (a byte-for-byte copy of
`langgraph.json` beside a link to `src/`, so a developer's `.env` never leaks in), with the
model pointed at the OpenAI stub and threads persisted to a fresh Postgres database.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph_sdk import get_client
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.openai_stub import OpenAIStub
from threadline.assembly import make_graph
from threadline.checkpointers import open_checkpointer
from threadline.dev.services import free_port
from threadline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LANGGRAPH_CLI = Path(sys.executable).parent / "langgraph"
START_TIMEOUT = 120.0
BUDGET = 3000
ANSI = re.compile(r"\x1b\[[0-9;]*m")
API_URL = re.compile(r"API: (http://127\.0\.0\.1:\d+)")
ISOLATED_PREFIXES = ("THREADLINE_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_")


@dataclass
class DevServer:
    url: str
    project: Path
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        text = ANSI.sub("", self.log.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])


def scratch_project(root: Path) -> Path:
    """A directory holding the project's `langgraph.json` and its `src/`, nothing else."""
    project = root / "project"
    project.mkdir(parents=True)
    shutil.copyfile(REPO / "langgraph.json", project / "langgraph.json")
    (project / "src").symlink_to(REPO / "src", target_is_directory=True)
    return project


def dev_environment(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus anything that could configure the run, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ISOLATED_PREFIXES)}
    env |= {
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGSMITH_TRACING": "false",
    }
    return env | extra


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group (the CLI spawns workers), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def _served_url(log: Path) -> str | None:
    """The URL the server announced (it moves to another port if ours was taken meanwhile)."""
    match = API_URL.search(ANSI.sub("", log.read_text(errors="replace")))
    return match.group(1) if match else None


def _answers_ok(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ok", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(project: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], DevServer]:
    log = project / "langgraph-dev.log"
    argv = [str(LANGGRAPH_CLI), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    argv += ["--port", str(free_port())]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, DevServer(url="", project=project, log=log)


def _wait_until_served(proc: subprocess.Popen[bytes], server: DevServer) -> DevServer:
    """Block until the server answers /ok; on exit or timeout, fail with its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{server.log_tail()}")
        url = _served_url(server.log)
        if url and _answers_ok(url):
            server.url = url
            return server
        time.sleep(0.2)
    _stop(proc)
    pytest.fail(f"langgraph dev did not answer /ok in {START_TIMEOUT:.0f}s:\n{server.log_tail()}")


@pytest.fixture
def run_langgraph_dev(tmp_path: Path) -> Iterator[Any]:
    """Start `langgraph dev` in a scratch project; wait for /ok; stop it at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def run(env: dict[str, str], dotenv: str | None = None) -> DevServer:
        project = scratch_project(tmp_path / f"run{len(started)}")
        if dotenv is not None:
            (project / ".env").write_text(dotenv)
        proc, server = _start(project, dev_environment(env))
        started.append(proc)
        return _wait_until_served(proc, server)

    yield run
    for proc in started:
        _stop(proc)


def postgres_env(url: str) -> dict[str, str]:
    return {"THREADLINE_CHECKPOINTER": "postgres", "THREADLINE_POSTGRES_URL": url}


def stub_env(stub: OpenAIStub) -> dict[str, str]:
    return {"THREADLINE_MODEL": "openai:gpt-4o-mini", **stub.env()}


def contents(messages: list[Any]) -> list[str]:
    return [m["content"] if isinstance(m, dict) else str(m.content) for m in messages]


# ------------------------------------------------------------------------------ shared server


@pytest.fixture(scope="module")
def module_db_url(postgres_url: str) -> Iterator[str]:
    """A fresh database shared by the tests that use one `langgraph dev` server."""
    name = f"t_{uuid.uuid4().hex}"
    url = urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        warnings.warn(f"could not drop test database {name}: {exc}", stacklevel=1)


@pytest.fixture(scope="module")
def module_stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def studio(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str, module_stub: OpenAIStub
) -> Iterator[DevServer]:
    """One `langgraph dev` on Postgres and the stub, no `.env` in its project."""
    project = scratch_project(tmp_path_factory.mktemp("studio"))
    env = dev_environment(
        stub_env(module_stub)
        | postgres_env(module_db_url)
        | {"THREADLINE_MAX_CONTEXT_TOKENS": str(BUDGET)}
    )
    proc, server = _start(project, env)
    try:
        yield _wait_until_served(proc, server)
    finally:
        _stop(proc)


async def test_three_studio_turns_land_in_the_configured_backend(
    studio: DevServer, module_stub: OpenAIStub, module_db_url: str
) -> None:
    assert not (studio.project / ".env").exists()  # `"env": ".env"` must not need the file
    client = get_client(url=studio.url)
    [assistant] = await client.assistants.search(graph_id="agent")
    schemas = await client.assistants.get_schemas(assistant["assistant_id"])
    assert set(schemas["input_schema"]["properties"]) == {"messages"}  # Studio chat mode
    assert {"messages", "summary", "telemetry"} <= set(schemas["state_schema"]["properties"])

    thread_id = (await client.threads.create())["thread_id"]
    said = [f"studio turn {n} ({uuid.uuid4().hex[:8]})" for n in range(1, 4)]
    chat_before = len(module_stub.completions)
    for text in said:
        result = await client.runs.wait(
            thread_id, "agent", input={"messages": [{"role": "user", "content": text}]}
        )
        assert result["messages"][-1]["content"] == f"echo: {text}", studio.log_tail()
    expected = [part for text in said for part in (text, f"echo: {text}")]

    # The model saw the thread's memory, through the real ChatOpenAI client.
    requests = module_stub.completions[chat_before:]
    assert len(requests) == 3
    assert requests[-1].texts("user") == said
    assert requests[-1].texts("assistant") == [f"echo: {t}" for t in said[:2]]

    state = await client.threads.get_state(thread_id)
    assert contents(state["values"]["messages"]) == expected
    telemetry = state["values"]["telemetry"]
    assert telemetry["budget"] == BUDGET
    assert telemetry["transcript_messages"] == 5

    history = await client.threads.get_history(thread_id, limit=100)
    assert contents(history[0]["values"]["messages"]) == expected
    lengths = {len(h["values"].get("messages", [])) for h in history}
    assert {2, 4, 6} <= lengths  # a checkpoint after every reply

    async with open_checkpointer(
        Settings(_env_file=None, checkpointer="postgres", postgres_url=module_db_url)  # type: ignore[call-arg]
    ) as saver:
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        stored = [t async for t in saver.alist(config)]
        # The transcript is stored as deltas: read it back through the graph.
        reader = make_graph(saver, Settings(_env_file=None, model="fake"))  # type: ignore[call-arg]
        latest = await reader.aget_state(config)
        states = [s async for s in reader.aget_state_history(config)]
    transcript = latest.values["messages"]
    assert contents(transcript) == expected
    assert [type(m) for m in transcript] == [HumanMessage, AIMessage] * 3
    assert {t.config["configurable"]["checkpoint_id"] for t in stored} == {
        h["checkpoint"]["checkpoint_id"] for h in history
    }
    for turn in range(1, 4):
        assert any(
            contents(s.values.get("messages", [])) == expected[: 2 * turn] for s in states
        ), f"turn {turn} is not in the backend"


async def test_studio_state_shows_the_running_summary_and_per_run_budget(
    studio: DevServer, module_stub: OpenAIStub
) -> None:
    client = get_client(url=studio.url)
    thread_id = (await client.threads.create())["thread_id"]
    filler = "This sentence is here only to take up room in the context window. " * 4
    said = [f"fact {n}: my locker number is {100 + n}. {filler}" for n in range(1, 6)]
    before = len(module_stub.completions)
    for text in said:
        await client.runs.wait(
            thread_id,
            "agent",
            input={"messages": [{"role": "user", "content": text}]},
            context={"max_context_tokens": 256},  # Studio's context panel sends the same
        )
    values = (await client.threads.get_state(thread_id))["values"]
    assert values["telemetry"]["budget"] == 256
    assert values["telemetry"]["total_folds"] >= 1
    assert values["summarized_count"] >= 2
    assert values["summary"]  # the running summary is part of the thread state Studio shows
    assert contents(values["messages"])[::2] == said  # the transcript itself is never cut

    last_turn = module_stub.completions[before:][-1]
    assert last_turn.last_user_text == said[-1]
    assert said[0] not in last_turn.texts("user")  # folded away, reaching the model as summary


async def test_a_fork_made_in_studio_leaves_the_old_branch_readable(studio: DevServer) -> None:
    """Studio's time travel: re-run from the first turn's checkpoint, and edit an old one.
    The branch left behind keeps every checkpoint and its exact values."""
    client = get_client(url=studio.url)
    thread_id = (await client.threads.create())["thread_id"]
    said = ["fork one", "fork two"]
    for text in said:
        await client.runs.wait(
            thread_id, "agent", input={"messages": [{"role": "user", "content": text}]}
        )
    old_branch = await client.threads.get_history(thread_id, limit=100)
    old_head = old_branch[0]["checkpoint"]["checkpoint_id"]
    first_turn = next(
        h
        for h in old_branch
        if contents(h["values"].get("messages", [])) == ["fork one", "echo: fork one"]
    )
    await client.runs.wait(
        thread_id,
        "agent",
        input={"messages": [{"role": "user", "content": "fork two, again"}]},
        checkpoint_id=first_turn["checkpoint"]["checkpoint_id"],
    )
    await client.threads.update_state(
        thread_id,
        {"messages": [{"role": "user", "content": "an edit"}]},
        checkpoint_id=first_turn["checkpoint"]["checkpoint_id"],
    )
    expected_old = [part for text in said for part in (text, f"echo: {text}")]
    head = await client.threads.get_state(thread_id, checkpoint_id=old_head)
    assert contents(head["values"]["messages"]) == expected_old, studio.log_tail()
    everything = await client.threads.get_history(thread_id, limit=200)
    assert len(everything) > len(old_branch)
    by_id = {h["checkpoint"]["checkpoint_id"]: h for h in everything}
    for before in old_branch:
        again = by_id[before["checkpoint"]["checkpoint_id"]]
        assert contents(again["values"].get("messages", [])) == contents(
            before["values"].get("messages", [])
        )


async def test_threadline_http_api_is_mounted_beside_the_langgraph_api(
    studio: DevServer,
) -> None:
    client = get_client(url=studio.url)
    thread_id = (await client.threads.create())["thread_id"]
    await client.runs.wait(
        thread_id, "agent", input={"messages": [{"role": "user", "content": "from studio"}]}
    )
    async with httpx.AsyncClient(base_url=studio.url, timeout=30) as http:
        assert (await http.get("/ok")).status_code == 200
        assert (await http.get("/threadline/healthz")).status_code == 200
        found = await http.post("/threads/search", json={"limit": 100})
        assert found.status_code == 200
        assert thread_id in {t["thread_id"] for t in found.json()}
        reply = await http.post(
            "/threadline/agent/invoke",
            json={
                "input": {"messages": [{"type": "human", "content": "from the http api"}]},
                "config": {"configurable": {"thread_id": thread_id}},
            },
        )
    assert reply.status_code == 200, reply.text
    # One thread, two front doors: Studio sees the turn taken over threadline's own API.
    state = await client.threads.get_state(thread_id)
    assert contents(state["values"]["messages"]) == [
        "from studio",
        "echo: from studio",
        "from the http api",
        "echo: from the http api",
    ]


# ------------------------------------------------------------------------------ own servers


async def test_langgraph_dev_takes_its_settings_from_dot_env_when_present(
    run_langgraph_dev: Any, openai_stub: OpenAIStub, postgres_db_url: str
) -> None:
    from_file = stub_env(openai_stub) | postgres_env(postgres_db_url)
    from_file["THREADLINE_MAX_CONTEXT_TOKENS"] = "3000"
    dotenv = "".join(f"{key}={value}\n" for key, value in from_file.items())
    # Only the budget is also set in the shell: under `langgraph dev`, `.env` wins.
    server = run_langgraph_dev({"THREADLINE_MAX_CONTEXT_TOKENS": "4000"}, dotenv=dotenv)
    client = get_client(url=server.url)
    thread_id = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(
        thread_id, "agent", input={"messages": [{"role": "user", "content": "configured by .env"}]}
    )
    assert result["messages"][-1]["content"] == "echo: configured by .env", server.log_tail()
    assert openai_stub.completions[-1].last_user_text == "configured by .env"
    assert result["telemetry"]["budget"] == 3000
    async with open_checkpointer(
        Settings(_env_file=None, checkpointer="postgres", postgres_url=postgres_db_url)  # type: ignore[call-arg]
    ) as saver:
        reader = make_graph(saver, Settings(_env_file=None, model="fake"))  # type: ignore[call-arg]
        stored = await reader.aget_state({"configurable": {"thread_id": thread_id}})
    assert len(stored.values["messages"]) == 2


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            {"THREADLINE_CHECKPOINTER": "postgres"},
            "THREADLINE_CHECKPOINTER=postgres needs THREADLINE_POSTGRES_URL",
        ),
        ({"THREADLINE_AES_KEY": "short"}, "THREADLINE_AES_KEY must be 16, 24 or 32 bytes"),
    ],
    ids=["no-postgres-url", "bad-aes-key"],
)
def test_langgraph_dev_refuses_to_start_on_a_setting_that_cannot_work(
    tmp_path: Path, setting: dict[str, str], message: str
) -> None:
    project = scratch_project(tmp_path)
    env = dev_environment({"THREADLINE_MODEL": "fake", **setting})
    proc, server = _start(project, env)
    try:
        proc.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"langgraph dev kept running with {setting}:\n{server.log_tail()}")
    assert proc.returncode != 0
    assert message in server.log_tail(200)


async def test_langgraph_dev_persists_through_the_tiered_saver(
    run_langgraph_dev: Any,
    openai_stub: OpenAIStub,
    postgres_db_url: str,
    redis_server_factory: Any,
) -> None:
    redis = redis_server_factory()  # module-free, like managed Redis
    tiered = {
        "THREADLINE_CHECKPOINTER": "tiered",
        "THREADLINE_POSTGRES_URL": postgres_db_url,
        "THREADLINE_REDIS_URL": redis.url,
    }
    server = run_langgraph_dev(stub_env(openai_stub) | tiered)
    client = get_client(url=server.url)
    thread_id = (await client.threads.create())["thread_id"]
    said = ["tiered one", "tiered two"]
    await client.runs.wait(
        thread_id, "agent", input={"messages": [{"role": "user", "content": said[0]}]}
    )
    hot = Redis.from_url(redis.url, retry=Retry(NoBackoff(), 0))
    try:
        assert hot.dbsize() > 0, "the hot tier was never written"
    finally:
        hot.close()

    redis.restart()  # the hot tier is gone; the turn must come back from Postgres
    await client.runs.wait(
        thread_id, "agent", input={"messages": [{"role": "user", "content": said[1]}]}
    )
    expected = [part for text in said for part in (text, f"echo: {text}")]
    state = await client.threads.get_state(thread_id)
    assert contents(state["values"]["messages"]) == expected, server.log_tail()

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpointer="tiered",
        postgres_url=postgres_db_url,
        redis_url=redis.url,
    )
    redis.restart()
    async with open_checkpointer(settings) as saver:
        reader = make_graph(saver, Settings(_env_file=None, model="fake"))  # type: ignore[call-arg]
        stored = await reader.aget_state({"configurable": {"thread_id": thread_id}})
    assert contents(stored.values["messages"]) == expected
