"""Retention in-process on every backend: each TTL strategy, per-thread TTL, hold, restore.

Time is injected: a sweep is asked to run as of a later moment (`Sweeper.sweep(now=...)`), so
threads written now are hours or days idle without anyone sleeping.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from tests.fixtures.server import settings_for
from threadline.assembly import open_keeper
from threadline.checkpointers.records import ARCHIVED, LIVE
from threadline.locks import TurnLocks
from threadline.retention import Sweeper, ThreadKeeper
from threadline.retention.archive import ArchivedThread, object_name
from threadline.server.turns import TurnRunner
from threadline.settings import Settings

HOUR = 3600.0
STRATEGIES = {
    "memory": ["delete", "keep_latest", "archive"],
    "sqlite": ["delete", "keep_latest", "archive"],
    "postgres": ["delete", "keep_latest", "archive"],
    "tiered": ["delete", "keep_latest", "archive"],
    "redis": ["delete", "archive"],  # keep_latest is refused at start-up (test below)
}
CASES = [(backend, strategy) for backend, names in STRATEGIES.items() for strategy in names]


@dataclass
class Deployment:
    settings: Settings
    keeper: ThreadKeeper
    locks: TurnLocks
    runner: TurnRunner

    def sweeper(self) -> Sweeper:
        s = self.settings
        return Sweeper(self.keeper, self.locks, s.ttl_strategy, s.thread_ttl_seconds, 100)

    async def turns(self, key: str, *texts: str) -> None:
        for text in texts:
            await self.runner.invoke({"messages": [HumanMessage(text)]}, config(key))

    async def values(self, key: str) -> dict[str, Any]:
        return dict((await self.keeper.graph.aget_state(config(key))).values)

    async def checkpoints(self, key: str) -> int:
        saver = self.keeper.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        return len([t async for t in saver.alist(config(key))])


def config(key: str) -> Any:
    return {"configurable": {"thread_id": key}}


@pytest.fixture
def deployment(backend_stores: dict[str, dict[str, Any]], tmp_path: Path) -> Any:
    """`deployment(backend, **settings)`: retention's operations and a turn runner on it."""
    stores = backend_stores

    @contextlib.asynccontextmanager
    async def open_deployment(backend: str, **values: Any) -> AsyncIterator[Deployment]:
        values.setdefault("audit_log_path", tmp_path / "audit.jsonl")
        values.setdefault("archive_url", f"file://{tmp_path / 'archive'}")
        settings = settings_for(
            model="fake", checkpointer=backend, max_context_tokens=300, **stores[backend], **values
        ).check()
        async with open_keeper(settings) as (keeper, locks):
            runner = TurnRunner(keeper.graph, keeper=keeper)
            yield Deployment(settings, keeper, locks, runner)

    return open_deployment


def audit_actions(path: Path) -> list[str]:
    return [json.loads(line)["action"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("backend", "strategy"), CASES)
async def test_idle_threads_expire_by_strategy_and_the_rest_stay(
    backend: str, strategy: str, deployment: Any, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]  # the Redis Stack server is shared by the session
    own, held, default, fresh = (f"{name}-{run}" for name in ("own", "held", "default", "fresh"))
    async with deployment(backend, thread_ttl="12h", ttl_strategy=strategy) as d:
        records = d.keeper.records
        # Long enough that the running summary folds part of the transcript.
        await d.turns(own, *(f"turn {i} of the own-ttl thread " * 6 for i in range(12)))
        for key in (held, default, fresh):
            await d.turns(key, f"first of {key}", f"second of {key}")
        await records.aupdate_thread_record(own, {"ttl_seconds": HOUR})
        await records.aupdate_thread_record(held, {"ttl_seconds": HOUR, "hold": True})
        await records.aupdate_thread_record(fresh, {"ttl_seconds": 30 * 24 * HOUR})
        before = {key: await d.values(key) for key in (own, held, default, fresh)}
        counts = {key: await d.checkpoints(key) for key in (own, held, default, fresh)}
        assert before[own]["summarized_count"] > 0  # the summary is part of what must survive

        now = time.time()
        dry = await d.sweeper().sweep(now=now + 2 * HOUR, dry_run=True)
        assert own in dry.thread_keys and held not in dry.thread_keys
        first = await d.sweeper().sweep(now=now + 2 * HOUR)  # past 1h, not past 12h
        second = await d.sweeper().sweep(now=now + 13 * HOUR)  # past 12h too
        mine = {own, held, default, fresh}
        assert mine & set(first.thread_keys) == {own}
        assert mine & set(second.thread_keys) == {default}
        again = await d.sweeper().sweep(now=now + 13 * HOUR)  # nothing changed since
        assert not mine & set(again.thread_keys)

        for key in (held, fresh):  # on hold, or within its own longer TTL: untouched
            assert await d.values(key) == before[key]
            assert await d.checkpoints(key) == counts[key]
            assert (await records.aget_thread_record(key)).status == LIVE  # type: ignore[union-attr]

        for key in (own, default):
            record = await records.aget_thread_record(key)
            if strategy == "delete":
                assert record is None
                assert await d.checkpoints(key) == 0
            elif strategy == "keep_latest":
                assert record is not None and record.status == LIVE
                assert await d.checkpoints(key) == 1 < counts[key]
                assert await d.values(key) == before[key]
            else:
                assert record is not None and record.status == ARCHIVED
                assert await d.checkpoints(key) == 0
                assert (tmp_path / "archive" / object_name(key)).exists()
                restored = await d.keeper.restore(key)
                assert restored.status == LIVE and restored.updated_at > record.updated_at
                assert await d.values(key) == before[key]
                assert not (tmp_path / "archive" / object_name(key)).exists()

        if strategy != "delete":  # the thread goes on where it was
            await d.turns(own, "one more")
            after = (await d.values(own))["messages"]
            assert after[: len(before[own]["messages"])] == before[own]["messages"]
            assert len(after) == len(before[own]["messages"]) + 2

    action = {"delete": "expire", "keep_latest": "keep_latest", "archive": "archive"}[strategy]
    actions = audit_actions(tmp_path / "audit.jsonl")
    assert actions.count(action) >= 2
    if strategy == "archive":
        assert "restore" in actions
    log = (tmp_path / "audit.jsonl").read_text()
    assert own not in log and "own-ttl thread" not in log  # hashed ids, no content


async def test_an_archive_is_encrypted_and_restores_whole_from_s3(
    deployment: Any, s3_archive: str
) -> None:
    from tests.fixtures.s3 import s3_objects

    canary = f"canary-{uuid.uuid4().hex[:8]}"
    key = "secret-thread"
    async with deployment(
        "tiered", ttl_strategy="archive", archive_url=s3_archive, aes_key="k" * 32
    ) as d:
        await d.turns(key, f"my {canary} is here", "and more")
        before = await d.values(key)
        await d.keeper.records.aupdate_thread_record(key, {"ttl_seconds": 60})
        report = await d.sweeper().sweep(now=time.time() + HOUR)
        assert report.thread_keys == [key] and report.error is None
        objects = s3_objects(s3_archive)
        assert list(objects) == [f"archive/{object_name(key)}"]
        stored = next(iter(objects.values()))
        assert canary.encode() not in stored and b"my " not in stored
        assert b'"type": "bytes+aesb-' in stored.split(b"\n")[1]  # encrypted, bound
        assert ArchivedThread.unseal(stored, d.keeper.serde).values == before  # with the key
        await d.keeper.restore(key)
        assert await d.values(key) == before
        assert s3_objects(s3_archive) == {}


async def test_two_archivers_of_one_thread_archive_it_once(deployment: Any, tmp_path: Path) -> None:
    import asyncio

    async with deployment("postgres", ttl_strategy="archive") as d:
        await d.turns("contended", "hello")
        record = await d.keeper.records.aget_thread_record("contended")
        assert record is not None
        results = await asyncio.gather(
            d.keeper.archive_thread(record), d.keeper.archive_thread(record)
        )
        assert sorted(results) == [False, True]
    assert audit_actions(tmp_path / "audit.jsonl") == ["archive"]


async def test_only_one_sweep_runs_at_a_time(deployment: Any, postgres_db_url: str) -> None:
    from threadline.locks import open_turn_locks
    from threadline.retention.sweeper import SWEEP_LEASE_KEY

    async with deployment("postgres", thread_ttl="1h") as d:
        other = settings_for(checkpointer="postgres", postgres_url=postgres_db_url)
        async with open_turn_locks(other) as locks, locks.hold([SWEEP_LEASE_KEY], 1):
            report = await d.sweeper().sweep(now=time.time() + 2 * HOUR)
        assert report.lease_taken and "another sweep" in report.summary()


def test_keep_latest_is_refused_on_redis_at_start() -> None:
    from threadline.settings import SettingsError

    settings = settings_for(
        model="fake", checkpointer="redis", redis_url="redis://x", ttl_strategy="keep_latest"
    )
    with pytest.raises(SettingsError, match="keep_latest is not available"):
        settings.check()
    with pytest.raises(SettingsError, match="needs THREADLINE_ARCHIVE_URL"):
        settings_for(model="fake", ttl_strategy="archive").check()


@pytest.mark.parametrize("backend", list(STRATEGIES))
async def test_a_dry_run_counts_every_expired_thread_not_one_batch(
    backend: str, deployment: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    keys = [f"dry{n}-{run}" for n in range(5)]
    async with deployment(backend, thread_ttl="1h") as d:
        for key in keys:
            await d.turns(key, f"hello from {key}")
        sweeper = Sweeper(d.keeper, d.locks, "delete", HOUR, batch_size=2)
        later = time.time() + 2 * HOUR
        dry = await sweeper.sweep(now=later, dry_run=True, max_batches=None)
        assert set(keys) <= set(dry.thread_keys)
        assert dry.expired == len(set(dry.thread_keys))
        swept = await sweeper.sweep(now=later, max_batches=None)
        assert set(keys) <= set(swept.thread_keys)
        assert dry.expired == swept.handled  # the dry run said what the sweep then did
        for key in keys:
            assert await d.keeper.records.aget_thread_record(key) is None


def block_archive_of(archive: Path, key: str) -> Path:
    """Make the archive object of `key` impossible to write: a directory where it would go
    (a real file archive that fails for this one thread; root ignores permissions)."""
    blocker = archive / object_name(key)
    blocker.mkdir(parents=True)
    (blocker / "in-the-way").write_text("")
    return blocker


async def test_a_failing_thread_is_counted_and_does_not_stop_or_crowd_out_the_sweep(
    deployment: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import shutil

    archive = tmp_path / "archive"
    bad = ["bad-0", "bad-1"]  # the oldest: first in every listing of expired threads
    good = [f"good-{n}" for n in range(4)]
    later = [f"later-{n}" for n in range(4)]
    async with deployment("postgres", ttl_strategy="archive", thread_ttl="1h") as d:
        for key in [*bad, *good]:
            await d.turns(key, f"private words of {key}")
        before = {key: await d.values(key) for key in bad}
        blockers = [block_archive_of(archive, key) for key in bad]

        # The CLI's sweep (every batch): the bad threads fail, are counted, and the rest go.
        with caplog.at_level(logging.WARNING, logger="threadline.retention"):
            report = await Sweeper(d.keeper, d.locks, "archive", HOUR, batch_size=2).sweep(
                now=time.time() + 2 * HOUR, max_batches=None
            )
        assert report.error is None
        assert (report.handled, report.failed, report.expired) == (4, 2, 6)
        assert report.failures == {"IsADirectoryError": 2}
        assert sorted(report.thread_keys) == good
        assert "4 of 6 expired threads archived" in report.summary()
        assert "2 failed (IsADirectoryError x2)" in report.summary()
        for key in bad:  # left as they were
            assert (await d.keeper.records.aget_thread_record(key)).status == LIVE  # type: ignore[union-attr]
            assert await d.values(key) == before[key]
        logged = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(logged) == 2
        assert d.keeper.audit.hashed("bad-0") in logged[0] and "IsADirectoryError" in logged[0]
        assert not any(k in line for line in logged for k in (*bad, "private", "Errno"))

        # The server's sweep (one batch of 2 each time) on the same store: the two failing
        # threads fill the first batch, then wait until every other thread is done.
        for key in later:
            await d.turns(key, f"private words of {key}")
        server = Sweeper(d.keeper, d.locks, "archive", HOUR, batch_size=2)
        at = time.time() + 2 * HOUR
        runs = [await server.sweep(now=at) for _ in range(4)]
        assert [(r.handled, r.failed) for r in runs] == [(0, 2), (2, 0), (2, 0), (0, 2)]
        assert sorted(runs[1].thread_keys + runs[2].thread_keys) == later

        for blocker in blockers:  # the archive is fixed: the next sweep retries them
            shutil.rmtree(blocker)
        fixed = await server.sweep(now=at)
        assert sorted(fixed.thread_keys) == bad and fixed.failed == 0
        for key in bad:
            assert (await d.keeper.records.aget_thread_record(key)).status == ARCHIVED  # type: ignore[union-attr]


async def test_failures_in_a_row_end_the_sweep(deployment: Any, tmp_path: Path) -> None:
    """Every thread failing alike is the archive, not the threads: stop, do not try them all."""
    async with deployment("sqlite", ttl_strategy="archive", thread_ttl="1h") as d:
        keys = [f"t{n}" for n in range(4)]
        for key in keys:
            await d.turns(key, "hello")
            block_archive_of(tmp_path / "archive", key)
        sweeper = Sweeper(d.keeper, d.locks, "archive", HOUR, batch_size=2, give_up_after=3)
        report = await sweeper.sweep(now=time.time() + 2 * HOUR, max_batches=None)
        assert report.failed == 3 and report.handled == 0
        assert report.error == "3 threads in a row failed"


async def test_a_thread_with_corrupted_rows_fails_alone(
    deployment: Any, postgres_db_url: str
) -> None:
    """A thread whose stored values cannot be read (damaged in Postgres) is counted as failed;
    keep_latest still cuts the others."""
    import psycopg

    async with deployment("postgres", ttl_strategy="keep_latest", thread_ttl="1h") as d:
        for key in ("damaged", "fine-0", "fine-1"):
            await d.turns(key, f"first of {key}", f"second of {key}")
        with psycopg.connect(postgres_db_url, autocommit=True) as conn:
            for table in ("checkpoint_blobs", "checkpoint_writes"):
                conn.execute(
                    f"UPDATE {table} SET blob = %s WHERE thread_id = %s",
                    (b"\xc1 not what was written", "damaged"),
                )
        report = await Sweeper(d.keeper, d.locks, "keep_latest", HOUR, batch_size=1).sweep(
            now=time.time() + 2 * HOUR, max_batches=None
        )
        assert report.error is None
        assert (report.handled, report.failed) == (2, 1)
        assert sorted(report.thread_keys) == ["fine-0", "fine-1"]
        assert await d.checkpoints("fine-0") == await d.checkpoints("fine-1") == 1
        with psycopg.connect(postgres_db_url) as conn:  # the damaged thread is left as it was
            left = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = 'damaged'")
            assert left.fetchone()[0] > 1  # type: ignore[index]
