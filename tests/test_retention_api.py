"""Retention as a client sees it: per-thread TTL and hold through PATCH, an archived thread
read, refused a turn, restored over HTTP and continued; erasure of held and archived threads.

The sweep runs as a second replica would (its own saver and locks on the same Postgres), as
of a later moment.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from tests.fixtures.server import settings_for
from tests.test_erasure import postgres_holds, turn
from tests.test_observability import moved, scrape
from threadline.assembly import open_keeper
from threadline.retention import Sweeper

HOUR = 3600.0
TRANSCRIPT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


async def sweep_later(settings: Any, hours: float) -> list[str]:
    async with open_keeper(settings) as (keeper, locks):
        sweeper = Sweeper(keeper, locks, settings.ttl_strategy, settings.thread_ttl_seconds)
        report = await sweeper.sweep(now=time.time() + hours * HOUR)
        assert report.error is None, report.error
        return [key for key in report.thread_keys]


async def test_archive_restore_and_erase_over_http(
    served: Any, postgres_db_url: str, tmp_path: Path
) -> None:
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    archive = tmp_path / "archive"
    retention = {"ttl_strategy": "archive", "archive_url": f"file://{archive}"}
    ada, bob = {"X-User-Id": "ada"}, {"X-User-Id": "bob"}
    async with served("postgres", **retention) as client:
        metrics_before = await scrape(client)
        for thread, text, who in (
            ("t1", f"remember {canary}", ada),
            ("t1", "and this", ada),
            ("t2", "kept for the lawyers", ada),
            ("t3", "bob's", bob),
        ):
            response = await client.post("/agent/invoke", json=turn(thread, text), headers=who)
            assert response.is_success
        before = (await client.get("/threads/t1")).json()["messages"]

        bad = await client.patch("/threads/t1", json={"ttl": "soon"})
        assert bad.status_code == 422 and "90s, 5m, 12h" in bad.text
        patched = await client.patch("/threads/t1", json={"ttl": "1h"})
        assert patched.status_code == 200 and patched.json()["ttl"] == "1h"
        held = await client.patch("/threads/t2", json={"ttl": "1h", "hold": True})
        assert held.json()["hold"] is True and held.json()["ttl"] == "1h"

        settings = settings_for(
            checkpointer="postgres",
            postgres_url=postgres_db_url,
            **retention,
            audit_log_path=tmp_path / "audit.jsonl",
        )
        assert await sweep_later(settings, 2) == ["t1"]  # t2 is on hold, t3 has no TTL

        shown = await client.get("/threads/t1")
        assert shown.status_code == 200
        body = shown.json()
        assert body["status"] == "archived" and body["messages"] == []
        assert body["record"]["status"] == "archived" and body["record"]["message_count"] == 4
        listed = (await client.get("/threads")).json()["threads"]
        assert {t["thread_id"]: t["status"] for t in listed}["t1"] == "archived"
        assert (await client.get("/threads/t1/export")).status_code == 409
        refused = await client.post("/agent/invoke", json=turn("t1", "hello?"), headers=ada)
        assert refused.status_code == 409 and "restore" in refused.text
        # The transcript is only in the archive now (the record keeps the title for listings).
        assert not postgres_holds(postgres_db_url, canary.encode(), TRANSCRIPT_TABLES)

        restored = await client.post("/threads/t1/restore", headers=ada)
        assert restored.status_code == 200 and restored.json()["status"] == "live"
        assert (await client.get("/threads/t1")).json()["messages"] == before
        assert (await client.post("/threads/t3/restore")).status_code == 409  # not archived
        assert (await client.post("/threads/nope/restore")).status_code == 404
        go_on = await client.post("/agent/invoke", json=turn("t1", "still there?"), headers=ada)
        assert go_on.status_code == 200
        assert (await client.get("/threads/t1")).json()["record"]["message_count"] == 6

        assert await sweep_later(settings, 2) == ["t1"]  # archived again
        assert list(archive.iterdir())
        assert (await client.delete("/threads/t2")).status_code == 409  # on hold
        erased = await client.delete("/users/ada")
        assert erased.status_code == 200
        assert erased.json()["erased_threads"] == 1 and erased.json()["held_threads"] == ["t2"]
        assert list(archive.iterdir()) == []  # the archived thread's object is gone too
        assert (await client.get("/threads/t1")).status_code == 404
        assert (await client.get("/threads/t2")).status_code == 200
        lifted = await client.patch("/threads/t2", json={"hold": False, "ttl": None})
        assert lifted.json()["hold"] is False and lifted.json()["ttl"] is None
        assert (await client.delete("/threads/t2")).status_code == 200
        assert (await client.get("/threads/t3", headers=bob)).status_code == 200
        metrics_after = await scrape(client)
    for action, times in {"archive": 2, "restore": 1, "erase": 2, "expire": 0}.items():
        moves = moved(
            metrics_before, metrics_after, "threadline_retention_threads_total", action=action
        )
        assert moves == times, action  # erase: ada's archived t1, then t2
    assert moved(metrics_before, metrics_after, "threadline_sweeps_total", result="ok") == 2
    assert moved(metrics_before, metrics_after, "threadline_turns_total", outcome="conflict") == 1
    assert not postgres_holds(postgres_db_url, canary.encode())
    assert not any(canary.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


async def test_a_turn_restores_an_archived_thread_when_configured(
    served: Any, postgres_db_url: str, tmp_path: Path
) -> None:
    retention = {
        "ttl_strategy": "archive",
        "archive_url": f"file://{tmp_path / 'archive'}",
        "thread_ttl": "30d",
        "audit_log_path": tmp_path / "audit.jsonl",
    }
    async with served("postgres", restore_on_turn=True, **retention) as client:
        assert (await client.post("/agent/invoke", json=turn("t", "one"))).is_success
        settings = settings_for(checkpointer="postgres", postgres_url=postgres_db_url, **retention)
        assert await sweep_later(settings, 31 * 24) == ["t"]
        assert (await client.get("/threads/t")).json()["status"] == "archived"
        again = await client.post("/agent/invoke", json=turn("t", "two"))
        assert again.status_code == 200, again.text
        messages = (await client.get("/threads/t")).json()["messages"]
        assert [m["content"] for m in messages if m["type"] == "human"] == ["one", "two"]


async def test_the_server_sweeps_by_itself(served: Any) -> None:
    """`threadline serve` runs the sweep every THREADLINE_SWEEP_INTERVAL (real time here)."""
    import asyncio

    async with served("sqlite", thread_ttl="1s", sweep_interval="1s") as client:
        assert (await client.post("/agent/invoke", json=turn("short-lived", "hi"))).is_success
        assert (await client.get("/threads/short-lived")).status_code == 200
        for _ in range(100):
            if (await client.get("/threads/short-lived")).status_code == 404:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/threads/short-lived")).status_code == 404


async def test_the_cli_sweeps_and_restores(served: Any, tmp_path: Path) -> None:
    """Five expired threads, batches of two: the dry run counts all five (not one batch); a
    thread whose archive cannot be written fails alone, shown in the output and exit code."""
    import os
    import subprocess
    import sys

    from tests.test_retention import block_archive_of

    threads = [f"c{n}" for n in range(1, 6)]
    async with served("sqlite") as client:
        for thread in threads:
            assert (await client.post("/agent/invoke", json=turn(thread, "hi"))).is_success
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))},
        "THREADLINE_CHECKPOINTER": "sqlite",
        "THREADLINE_SQLITE_PATH": str(tmp_path / "threads.sqlite"),
        "THREADLINE_AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl"),
        "THREADLINE_THREAD_TTL": "30d",
        "THREADLINE_TTL_STRATEGY": "archive",
        "THREADLINE_ARCHIVE_URL": f"file://{tmp_path / 'archive'}",
        "THREADLINE_SWEEP_LIMIT": "2",
    }
    cli = str(Path(sys.executable).parent / "threadline")

    def threadline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)

    assert (
        "0 expired threads would be archived" in threadline("threads", "sweep", "--dry-run").stdout
    )
    later = threadline("threads", "sweep", "--dry-run", "--as-of", "2099-01-01T00:00:00")
    assert "5 expired threads would be archived" in later.stdout
    bad = threadline("threads", "sweep", "--as-of", "someday")
    assert bad.returncode == 2 and "--as-of must be" in bad.stderr
    blocker = block_archive_of(tmp_path / "archive", "c1")  # the oldest: first in each batch
    failed = threadline("threads", "sweep", "--as-of", "2099-01-01")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "4 of 5 expired threads archived (8 messages); 0 skipped; 1 failed" in failed.stdout
    assert "(IsADirectoryError x1)" in failed.stdout
    blocker.joinpath("in-the-way").unlink()
    blocker.rmdir()
    done = threadline("threads", "sweep", "--as-of", "2099-01-01")
    assert done.returncode == 0 and "1 of 1 expired threads archived" in done.stdout
    assert len(list((tmp_path / "archive").iterdir())) == 5
    restored = threadline("threads", "restore", "c1")
    assert restored.returncode == 0 and "restored c1 (2 messages)" in restored.stdout
    assert threadline("threads", "restore", "c1").returncode == 1  # not archived any more
    shown = threadline("threads", "show", "c1")
    assert "echo: hi" in shown.stdout or "hi" in shown.stdout


async def test_an_archived_thread_is_not_erased_without_its_archive(
    served: Any, postgres_db_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    retention = {"ttl_strategy": "archive", "archive_url": f"file://{archive}"}
    async with served("postgres", **retention) as client:
        assert (await client.post("/agent/invoke", json=turn("t", "hi"))).is_success
        assert (await client.patch("/threads/t", json={"ttl": "1m"})).is_success
        settings = settings_for(checkpointer="postgres", postgres_url=postgres_db_url, **retention)
        assert await sweep_later(settings, 1) == ["t"]
    async with served("postgres") as client:  # the archive setting was dropped
        refused = await client.delete("/threads/t")
        assert refused.status_code == 503 and "THREADLINE_ARCHIVE_URL" in refused.text
        assert (await client.get("/threads/t")).json()["status"] == "archived"
    async with served("postgres", **retention) as client:
        assert (await client.delete("/threads/t")).status_code == 200
    assert list(archive.iterdir()) == []
