"""A sweep killed at any point loses nothing: every thread is live and whole, or archived and
restorable whole; a second sweep finishes the work; a killed restore can be run again.

The sweep runs in a child process that SIGKILLs itself right after a chosen step returns:
writing the archive object, reading it back, marking the record archived, deleting the
checkpoints; for keep_latest, writing the snapshot; for restore, each of its steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from tests.fixtures.server import settings_for
from threadline.assembly import open_keeper
from threadline.checkpointers.records import ARCHIVED, LIVE
from threadline.retention.archive import ArchivedThread, object_name
from threadline.server.turns import TurnRunner

THREADS = [f"thread-{n}" for n in range(6)]
ROOT = Path(__file__).resolve().parent.parent


def run_killed(env: dict[str, str], command: str, point: str, nth: int, *keys: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.killed_sweep", command, point, str(nth), *keys],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


async def states(settings: Any) -> dict[str, tuple[str, Any]]:
    """Each thread's status and what it holds: its live state, or its archived one."""
    found: dict[str, tuple[str, Any]] = {}
    async with open_keeper(settings) as (keeper, _):
        for key in THREADS:
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


async def checkpoint_counts(settings: Any) -> dict[str, int]:
    async with open_keeper(settings) as (keeper, _):
        saver = keeper.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        return {
            key: len([t async for t in saver.alist({"configurable": {"thread_id": key}})])
            for key in THREADS
        }


@pytest.fixture
def deployment(postgres_db_url: str, tmp_path: Path) -> tuple[Any, dict[str, str]]:
    values = {
        "checkpointer": "postgres",
        "postgres_url": postgres_db_url,
        "archive_url": f"file://{tmp_path / 'archive'}",
        "audit_log_path": str(tmp_path / "audit.jsonl"),
        "aes_key": "k" * 32,
        "model": "fake",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")},
        **{f"THREADLINE_{k.upper()}": str(v) for k, v in values.items()},
    }
    return settings_for(**values), env


async def seed(settings: Any) -> dict[str, Any]:
    async with open_keeper(settings) as (keeper, _):
        runner = TurnRunner(keeper.graph, keeper=keeper)
        for key in THREADS:
            for text in (f"hello from {key}", "a second turn", "a third"):
                await runner.invoke(
                    {"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": key}}
                )
            await keeper.records.aupdate_thread_record(key, {"ttl_seconds": 60})
    return {key: values for key, (_, values) in (await states(settings)).items()}


@pytest.mark.parametrize(
    ("point", "nth"),
    [("archive.put", 2), ("archive.get", 3), ("mark", 2), ("delete", 4)],
)
async def test_a_killed_archive_sweep_loses_nothing(
    deployment: tuple[Any, dict[str, str]], point: str, nth: int
) -> None:
    settings, env = deployment
    settings = settings.model_copy(update={"ttl_strategy": "archive"})
    env = {**env, "THREADLINE_TTL_STRATEGY": "archive"}
    original = await seed(settings)

    assert run_killed(env, "sweep", point, nth) == -signal.SIGKILL
    after_kill = await states(settings)
    assert {key: values for key, (_, values) in after_kill.items()} == original
    statuses = [status for status, _ in after_kill.values()]
    assert LIVE in statuses  # killed part-way

    assert run_killed(env, "sweep", "none", 0) == 0  # the next sweep finishes
    finished = await states(settings)
    assert all(status == ARCHIVED for status, _ in finished.values())
    assert {key: values for key, (_, values) in finished.items()} == original

    for restore_point in ("delete", "snapshot", "mark"):  # restore, killed at each step
        assert run_killed(env, "restore", restore_point, 1, *THREADS) == -signal.SIGKILL
        assert {key: values for key, (_, values) in (await states(settings)).items()} == original
    assert run_killed(env, "restore", "none", 0, *THREADS) == 0
    restored = await states(settings)
    assert all(status == LIVE for status, _ in restored.values())
    assert {key: values for key, (_, values) in restored.items()} == original


async def test_a_killed_keep_latest_sweep_loses_nothing(
    deployment: tuple[Any, dict[str, str]],
) -> None:
    settings, env = deployment
    env = {**env, "THREADLINE_TTL_STRATEGY": "keep_latest"}
    original = await seed(settings)
    assert run_killed(env, "sweep", "snapshot", 3) == -signal.SIGKILL
    assert {key: values for key, (_, values) in (await states(settings)).items()} == original
    assert run_killed(env, "sweep", "delete", 2) == -signal.SIGKILL
    assert {key: values for key, (_, values) in (await states(settings)).items()} == original
    assert run_killed(env, "sweep", "none", 0) == 0
    assert set((await checkpoint_counts(settings)).values()) == {1}
    assert {key: values for key, (_, values) in (await states(settings)).items()} == original
