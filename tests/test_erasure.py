"""Forgetting a user: every thread they own, from every store, with a receipt and an audit line.

The stores are searched raw for a canary the erased user wrote — found before the erasure (so
the search can find it), gone after — while another user's threads stay whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis

from tests.fixtures.server import BACKENDS, settings_for
from threadline.locks import open_turn_locks

TABLES = (
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "threadline_threads",
    "threadline_turn_receipts",
)


def turn(thread_id: str, text: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


def postgres_holds(url: str, canary: bytes, tables: tuple[str, ...] = TABLES) -> bool:
    with psycopg.connect(url) as conn:
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}").fetchall():
                if canary in repr(row).encode() or any(
                    isinstance(v, bytes | memoryview) and canary in bytes(v) for v in row
                ):
                    return True
    return False


def redis_holds(url: str, canary: bytes) -> bool:
    """Every key's value, read by type (RedisJSON documents included)."""
    client = Redis.from_url(url)
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = list(client.hgetall(key).values())
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "ReJSON-RL":
            values = [json.dumps(client.json().get(key)).encode()]
        else:
            values = [client.dump(key)]
        if any(canary in (v if isinstance(v, bytes) else str(v).encode()) for v in values):
            return True
    return False


def sqlite_holds(path: Path, canary: bytes) -> bool:
    return any(canary in p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


def stores_hold(backend: str, canary: bytes, urls: dict[str, Any]) -> bool | None:
    """Whether the backend's raw storage holds `canary` (None: nothing to search, memory)."""
    found: list[bool] = []
    if backend in ("postgres", "tiered"):
        found.append(postgres_holds(urls["postgres"], canary))
    if backend == "redis":
        found.append(redis_holds(urls["redis"], canary))
    if backend == "tiered":
        found.append(redis_holds(urls["plain_redis"], canary))
    if backend == "sqlite":
        found.append(sqlite_holds(urls["sqlite"], canary))
    return any(found) if found else None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_erasing_a_user_leaves_no_trace_and_spares_the_others(
    backend: str,
    served: Any,
    postgres_db_url: str,
    redis_url: str,
    plain_redis_url: str,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]  # the Redis Stack server is shared by the session
    canary = f"canary-{run}-ada-secret".encode()
    urls = {
        "postgres": postgres_db_url,
        "redis": redis_url,
        "plain_redis": plain_redis_url,
        "sqlite": tmp_path / "threads.sqlite",
    }
    ada, bob = {"X-User-Id": f"ada-{run}"}, {"X-User-Id": f"bob-{run}"}
    async with served(backend) as client:
        for thread in (f"a1-{run}", f"a2-{run}"):
            for text in (f"{canary.decode()} in {thread}", "and more"):
                assert (
                    await client.post("/agent/invoke", json=turn(thread, text), headers=ada)
                ).is_success
        kept = f"b1-{run}"
        assert (
            await client.post("/agent/invoke", json=turn(kept, "bob's own"), headers=bob)
        ).is_success
        assert stores_hold(backend, canary, urls) in (True, None)  # the search finds it

        erased = await client.delete(f"/users/ada-{run}")
        assert erased.status_code == 200, erased.text
        receipt = erased.json()
        assert receipt["erased_threads"] == 2 and len(receipt["receipt_id"]) == 32

        listed = await client.get("/threads", params={"user_id": f"ada-{run}"})
        assert listed.json()["threads"] == []
        for thread in (f"a1-{run}", f"a2-{run}"):
            assert (await client.get(f"/threads/{thread}")).status_code == 404
        bobs = await client.get(f"/threads/{kept}", headers=bob)
        assert [m["content"] for m in bobs.json()["messages"]] == ["bob's own", "echo: bob's own"]
        again = await client.delete(f"/users/ada-{run}")
        assert again.json()["erased_threads"] == 0

    assert stores_hold(backend, canary, urls) in (False, None)
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["count"]) for a in audit] == [("erase", 2), ("erase", 0)]
    assert audit[0]["receipt_id"] == receipt["receipt_id"]
    assert f"ada-{run}" not in json.dumps(audit) and canary.decode() not in json.dumps(audit)
    assert audit[0]["user"] == audit[1]["user"]  # the same user, hashed the same way


async def test_the_cli_erases_a_user(served: Any, tmp_path: Path) -> None:
    ada = {"X-User-Id": "ada"}
    async with served("sqlite") as client:
        for thread in ("t1", "t2"):
            response = await client.post("/agent/invoke", json=turn(thread, "hi"), headers=ada)
            assert response.is_success
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))},
        "THREADLINE_CHECKPOINTER": "sqlite",
        "THREADLINE_SQLITE_PATH": str(tmp_path / "threads.sqlite"),
        "THREADLINE_AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl"),
        "THREADLINE_MODEL": "openai:gpt-4o-mini",  # no key: erasing needs no model
    }
    cli = str(Path(sys.executable).parent / "threadline")
    erased = subprocess.run(
        [cli, "users", "erase", "ada"], env=env, capture_output=True, text=True, timeout=120
    )
    assert erased.returncode == 0, erased.stderr
    assert "erased 2 threads of ada" in erased.stdout
    listed = subprocess.run(
        [cli, "threads", "list", "--user", "ada"], env=env, capture_output=True, text=True
    )
    assert "t1" not in listed.stdout and "t2" not in listed.stdout
    audit = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["count"] == 2


async def test_the_cli_waits_for_a_turn_the_server_is_running(
    served: Any, postgres_db_url: str, tmp_path: Path
) -> None:
    """The CLI takes the server's turn lock (a Postgres advisory lock held here)."""
    async with served("postgres") as client:
        ada = {"X-User-Id": "ada"}
        response = await client.post("/agent/invoke", json=turn("busy", "hi"), headers=ada)
        assert response.is_success
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))},
        "THREADLINE_CHECKPOINTER": "postgres",
        "THREADLINE_POSTGRES_URL": postgres_db_url,
        "THREADLINE_AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl"),
        "THREADLINE_TURN_LOCK_TIMEOUT_SECONDS": "0.5",
        "THREADLINE_MODEL": "fake",
    }
    cli = [str(Path(sys.executable).parent / "threadline"), "users", "erase", "ada"]
    settings = settings_for(checkpointer="postgres", postgres_url=postgres_db_url)
    async with open_turn_locks(settings) as locks, locks.hold(["busy"], 1.0):
        refused = await asyncio.to_thread(
            subprocess.run, cli, env=env, capture_output=True, text=True, timeout=120
        )
    assert refused.returncode == 1 and "busy" in refused.stderr
    erased = await asyncio.to_thread(
        subprocess.run, cli, env=env, capture_output=True, text=True, timeout=120
    )
    assert erased.returncode == 0 and "erased 1 threads" in erased.stdout
