"""Forgetting a user: every thread they own, from every store, with a receipt and an audit line.

The stores are searched raw for a canary the erased user wrote — a whole `pg_dump`, every Redis
value (compressed ones inflated), the SQLite files, the file archive (inflated) — found in each
before the erasure (so the search can find it), gone from all after, with the erased threads'
idempotency receipts, while another user's threads, live and archived, stay whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis

from tests.fixtures.server import BACKENDS, settings_for
from tests.test_tiered_encryption import inflated, leaks, postgres_dump
from threadline.checkpointers.redis import receipts_key
from threadline.locks import open_turn_locks
from threadline.retention.archive import object_name

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


def redis_values(url: str) -> list[bytes]:
    """Every key and value, read by type (RedisJSON documents included), each compressed
    hot-tier value inflated too: compression would otherwise hide plaintext from a search."""
    client = Redis.from_url(url)
    found: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            if kind == "string":
                values = [client.get(key) or b""]
            elif kind == "hash":
                values = [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == "zset":
                values = client.zrange(key, 0, -1)
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "ReJSON-RL":
                values = [json.dumps(client.json().get(key)).encode()]
            else:
                values = [client.dump(key) or b""]
            found += [key, *(v for value in values for v in (value, *inflated(value)))]
    finally:
        client.close()
    return found


def redis_holds(url: str, canary: bytes) -> bool:
    return any(leaks(value, canary.decode()) for value in redis_values(url))


def sqlite_holds(path: Path, canary: bytes) -> bool:
    return any(canary in p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


def archive_holds(root: Path, canary: bytes) -> bool:
    """Any archive object holding `canary`, its gzip-compressed body inflated (stored
    without a key here, so only the compression hides it)."""
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            inflated_body = b""
            with contextlib.suppress(Exception):
                inflated_body = gzip.decompress(data.split(b"\n", 2)[2])
            if canary in data or canary in inflated_body:
                return True
    return False


def where_stored(backend: str, canary: bytes, urls: dict[str, Any]) -> dict[str, bool]:
    """Store by store, whether its raw storage holds `canary`: a whole `pg_dump`, every Redis
    value (inflated), the SQLite files, the file archive (memory has nothing to search)."""
    found = {"archive": archive_holds(urls["archive"], canary)}
    if backend in ("postgres", "tiered"):
        found["postgres"] = leaks(postgres_dump(urls["postgres"]), canary.decode())
    if backend == "redis":
        found["redis"] = redis_holds(urls["redis"], canary)
    if backend == "tiered":
        found["hot redis"] = redis_holds(urls["plain_redis"], canary)
    if backend == "sqlite":
        found["sqlite"] = sqlite_holds(urls["sqlite"], canary)
    return found


def receipts_of(backend: str, urls: dict[str, Any], keys: list[str]) -> int | None:
    """How many idempotency receipts the threads `keys` have (None: memory, not searched)."""
    if backend in ("postgres", "tiered"):
        with psycopg.connect(urls["postgres"]) as conn:
            row = conn.execute(
                "SELECT count(*) FROM threadline_turn_receipts WHERE thread_id = ANY(%s)", (keys,)
            ).fetchone()
        return int(row[0]) if row else 0
    if backend == "sqlite":
        with sqlite3.connect(urls["sqlite"]) as conn:
            marks = ", ".join("?" for _ in keys)
            query = f"SELECT count(*) FROM threadline_turn_receipts WHERE thread_id IN ({marks})"
            return int(conn.execute(query, keys).fetchone()[0])
    if backend == "redis":
        client = Redis.from_url(urls["redis"])
        try:
            return sum(int(client.hlen(receipts_key(key))) for key in keys)
        finally:
            client.close()
    return None


def only_inflated(url: str, canary: bytes) -> bool:
    """Some Redis value holds `canary` only once inflated: the hot tier compressed it."""
    client = Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            if client.type(key) == b"hash":
                for value in client.hgetall(key).values():
                    if canary not in value and any(canary in v for v in inflated(value)):
                        return True
    finally:
        client.close()
    return False


@pytest.mark.parametrize("backend", BACKENDS)
async def test_erasing_a_user_leaves_no_trace_and_spares_the_others(
    backend: str,
    served: Any,
    postgres_db_url: str,
    redis_url: str,
    plain_redis_url: str,
    tmp_path: Path,
) -> None:
    """Ada has two live threads (one with a turn over 16 KiB, which the hot tier stores
    compressed) and one archived to a file archive; Bob has one live and one archived. Every
    store is searched raw for Ada's canary: found in each before, in none after."""
    run = uuid.uuid4().hex[:8]  # the Redis Stack server is shared by the session
    canary = f"canary-{run}-ada-secret".encode()
    urls = {
        "postgres": postgres_db_url,
        "redis": redis_url,
        "plain_redis": plain_redis_url,
        "sqlite": tmp_path / "threads.sqlite",
        "archive": tmp_path / "archive",
    }
    retention = {
        "ttl_strategy": "archive",
        "archive_url": f"file://{urls['archive']}",
        "sweep_interval": "1s",  # the server's own sweep archives threads with a 1s TTL
    }
    ada, bob = {"X-User-Id": f"ada-{run}"}, {"X-User-Id": f"bob-{run}"}
    a1, a2, a3, b1, b2 = (f"{name}-{run}" for name in ("a1", "a2", "a3", "b1", "b2"))
    long_turn = f"{canary.decode()} in a long turn " + "x" * (17 * 1024)
    async with served(backend, **retention) as client:

        async def say(thread: str, text: str, who: dict[str, str], key: str = "") -> None:
            headers = {**who, "Idempotency-Key": key} if key else who
            sent = await client.post("/agent/invoke", json=turn(thread, text), headers=headers)
            assert sent.is_success, sent.text

        # The long turn, then five more: the transcript's first snapshot (twelve channel
        # updates in), over 16 KiB, is what the hot tier stores compressed.
        ada_turns = [
            (a1, long_turn),
            *((a1, f"and more, {n}") for n in range(5)),
            (a2, f"{canary.decode()} in {a2}"),
            (a2, "and more"),
            (a3, f"{canary.decode()} in {a3}, soon archived"),
        ]
        for n, (thread, text) in enumerate(ada_turns):
            await say(thread, text, ada, key=f"retry-{run}-{n}")
        await say(b1, "bob's own", bob)
        await say(b2, "bob's archived", bob)
        for thread, who in ((a3, ada), (b2, bob)):
            patched = await client.patch(f"/threads/{thread}", json={"ttl": "1s"}, headers=who)
            assert patched.is_success, patched.text
        for _ in range(100):  # the server's sweep archives a3 and b2 within a few seconds
            statuses = [
                (await client.get(f"/threads/{t}", headers=who)).json()["status"]
                for t, who in ((a3, ada), (b2, bob))
            ]
            if statuses == ["archived", "archived"]:
                break
            await asyncio.sleep(0.1)
        assert statuses == ["archived", "archived"]

        found = where_stored(backend, canary, urls)
        assert all(found.values()), found  # the search finds it in every store
        if backend == "tiered":
            assert only_inflated(plain_redis_url, canary)  # the long turn, compressed
        # One receipt a turn (a3's went when it was archived).
        assert receipts_of(backend, urls, [a1, a2]) in (None, len(ada_turns) - 1)

        erased = await client.delete(f"/users/ada-{run}")
        assert erased.status_code == 200, erased.text
        receipt = erased.json()
        assert receipt["erased_threads"] == 3 and len(receipt["receipt_id"]) == 32

        listed = await client.get("/threads", params={"user_id": f"ada-{run}"})
        assert listed.json()["threads"] == []
        for thread in (a1, a2, a3):
            assert (await client.get(f"/threads/{thread}")).status_code == 404
        bobs = await client.get(f"/threads/{b1}", headers=bob)
        assert [m["content"] for m in bobs.json()["messages"]] == ["bob's own", "echo: bob's own"]
        restored = await client.post(f"/threads/{b2}/restore", headers=bob)
        assert restored.status_code == 200, restored.text  # Bob's archive object is whole
        again = await client.delete(f"/users/ada-{run}")
        assert again.json()["erased_threads"] == 0

    assert where_stored(backend, canary, urls) == dict.fromkeys(found, False)
    assert receipts_of(backend, urls, [a1, a2, a3]) in (None, 0)
    assert not (urls["archive"] / object_name(a3)).exists()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    erasures = [a for a in audit if a["action"] == "erase"]
    assert [a["count"] for a in erasures] == [3, 0]
    assert erasures[0]["receipt_id"] == receipt["receipt_id"]
    assert f"ada-{run}" not in json.dumps(audit) and canary.decode() not in json.dumps(audit)
    assert erasures[0]["user"] == erasures[1]["user"]  # the same user, hashed the same way


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
