"""A sweep killed at any point loses nothing: every thread is live and whole, or archived and
restorable whole (or, deleting, gone whole); a second sweep finishes the work; a killed
restore can be run again.

The sweep runs in a child process that SIGKILLs itself right after a chosen step returns:
writing the archive object, reading it back, marking the record archived, deleting the
checkpoints; for keep_latest, writing the snapshot; for delete, deleting the thread and its
archive object; for restore, each of its steps. On Postgres, and (archive, delete) on tiered,
whose hot tier a killed process leaves as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from tests.fixtures.server import settings_for
from threadline.assembly import open_keeper
from threadline.checkpointers.records import ARCHIVED, LIVE
from threadline.retention.archive import ArchivedThread, object_name
from threadline.server.turns import TurnRunner

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Deployment:
    settings: Any
    env: dict[str, str]
    threads: list[str]  # named per test: tiered's Redis is shared by the session

    def with_strategy(self, strategy: str) -> Deployment:
        return Deployment(
            self.settings.model_copy(update={"ttl_strategy": strategy}),
            {**self.env, "THREADLINE_TTL_STRATEGY": strategy},
            self.threads,
        )


def run_killed(d: Deployment, command: str, point: str, nth: int, *keys: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.killed_sweep", command, point, str(nth), *keys],
        env=d.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


async def states(d: Deployment) -> dict[str, tuple[str, Any]]:
    """Each thread's status and what it holds: its live state, or its archived one."""
    found: dict[str, tuple[str, Any]] = {}
    async with open_keeper(d.settings) as (keeper, _):
        for key in d.threads:
            record = await keeper.records.aget_thread_record(key)
            assert record is not None, f"{key} lost its record"
            if record.status == LIVE:
                state = await keeper.graph.aget_state({"configurable": {"thread_id": key}})
                found[key] = (LIVE, dict(state.values))
            else:
                assert record.status == ARCHIVED
                assert keeper.archive is not None
                data = await keeper.archive.get(object_name(key))
                assert data is not None, f"{key} is archived but its object is missing"
                found[key] = (ARCHIVED, ArchivedThread.unseal(data, keeper.serde).values)
    return found


async def checkpoint_counts(d: Deployment) -> dict[str, int]:
    async with open_keeper(d.settings) as (keeper, _):
        saver = keeper.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        return {
            key: len([t async for t in saver.alist({"configurable": {"thread_id": key}})])
            for key in d.threads
        }


async def live_or_gone(d: Deployment) -> dict[str, Any]:
    """Each thread whole and live (its values), or gone whole (None): no record left without
    checkpoints, no checkpoints without a record, no archive object."""
    found: dict[str, Any] = {}
    counts = await checkpoint_counts(d)
    async with open_keeper(d.settings) as (keeper, _):
        assert keeper.archive is not None
        for key in d.threads:
            record = await keeper.records.aget_thread_record(key)
            if record is None:
                assert counts[key] == 0, f"{key} lost its record but kept its checkpoints"
                assert await keeper.archive.get(object_name(key)) is None
                found[key] = None
            else:
                assert record.status == LIVE and counts[key] > 0, f"{key} is half deleted"
                state = await keeper.graph.aget_state({"configurable": {"thread_id": key}})
                found[key] = dict(state.values)
    return found


@pytest.fixture(params=["postgres", "tiered"])
def deployment(request: Any, postgres_db_url: str, tmp_path: Path) -> Deployment:
    values = {
        "checkpointer": request.param,
        "postgres_url": postgres_db_url,
        "archive_url": f"file://{tmp_path / 'archive'}",
        "audit_log_path": str(tmp_path / "audit.jsonl"),
        "aes_key": "k" * 32,
        "model": "fake",
    }
    if request.param == "tiered":
        values["redis_url"] = request.getfixturevalue("plain_redis_url")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")},
        **{f"THREADLINE_{k.upper()}": str(v) for k, v in values.items()},
    }
    run = uuid.uuid4().hex[:8]
    return Deployment(settings_for(**values), env, [f"thread-{run}-{n}" for n in range(6)])


def on(*backends: str) -> Any:
    """Run the test on these of the deployment's backends only."""
    return pytest.mark.parametrize("deployment", backends, indirect=True)


async def seed(d: Deployment) -> dict[str, Any]:
    async with open_keeper(d.settings) as (keeper, _):
        runner = TurnRunner(keeper.graph, keeper=keeper)
        for key in d.threads:
            for text in (f"hello from {key}", "a second turn", "a third"):
                await runner.invoke(
                    {"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": key}}
                )
            await keeper.records.aupdate_thread_record(key, {"ttl_seconds": 60})
    return {key: values for key, (_, values) in (await states(d)).items()}


ARCHIVE_KILLS = [("archive.put", 2), ("archive.get", 3), ("mark", 2), ("delete", 4)]


@pytest.mark.parametrize(
    ("deployment", "point", "nth"),
    [
        *(("postgres", point, nth) for point, nth in ARCHIVE_KILLS),
        # tiered: the steps that touch its two tiers (the record, the checkpoints)
        *(("tiered", point, nth) for point, nth in ARCHIVE_KILLS[2:]),
    ],
    indirect=["deployment"],
)
async def test_a_killed_archive_sweep_loses_nothing(
    deployment: Deployment, point: str, nth: int
) -> None:
    d = deployment.with_strategy("archive")
    original = await seed(d)

    assert run_killed(d, "sweep", point, nth) == -signal.SIGKILL
    after_kill = await states(d)
    assert {key: values for key, (_, values) in after_kill.items()} == original
    statuses = [status for status, _ in after_kill.values()]
    assert LIVE in statuses  # killed part-way

    assert run_killed(d, "sweep", "none", 0) == 0  # the next sweep finishes
    finished = await states(d)
    assert all(status == ARCHIVED for status, _ in finished.values())
    assert {key: values for key, (_, values) in finished.items()} == original

    for restore_point in ("delete", "snapshot", "mark"):  # restore, killed at each step
        assert run_killed(d, "restore", restore_point, 1, *d.threads) == -signal.SIGKILL
        assert {key: values for key, (_, values) in (await states(d)).items()} == original
    assert run_killed(d, "restore", "none", 0, *d.threads) == 0
    restored = await states(d)
    assert all(status == LIVE for status, _ in restored.values())
    assert {key: values for key, (_, values) in restored.items()} == original


@on("postgres")
async def test_a_killed_keep_latest_sweep_loses_nothing(deployment: Deployment) -> None:
    d = deployment.with_strategy("keep_latest")
    original = await seed(d)
    assert run_killed(d, "sweep", "snapshot", 3) == -signal.SIGKILL
    assert {key: values for key, (_, values) in (await states(d)).items()} == original
    assert run_killed(d, "sweep", "delete", 2) == -signal.SIGKILL
    assert {key: values for key, (_, values) in (await states(d)).items()} == original
    assert run_killed(d, "sweep", "none", 0) == 0
    assert set((await checkpoint_counts(d)).values()) == {1}
    assert {key: values for key, (_, values) in (await states(d)).items()} == original


async def test_a_killed_delete_sweep_leaves_each_thread_whole_or_gone(
    deployment: Deployment,
) -> None:
    d = deployment.with_strategy("delete")
    original = await seed(d)
    for point, nth in (("delete_thread", 2), ("archive.delete", 2)):
        assert run_killed(d, "sweep", point, nth) == -signal.SIGKILL
        after_kill = await live_or_gone(d)
        assert None in after_kill.values() and any(after_kill.values())  # killed part-way
        assert {k: v for k, v in after_kill.items() if v is not None} == {
            k: original[k] for k, v in after_kill.items() if v is not None
        }
    assert run_killed(d, "sweep", "none", 0) == 0  # the next sweep finishes
    assert set((await live_or_gone(d)).values()) == {None}
