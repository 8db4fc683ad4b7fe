"""Key rotation: threads written under key A, rotated to B (killed part-way, then resumed with
`threadline keys rotate`), then A dropped: every thread and archived thread still reads, and
no stored value names A any more."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import HumanMessage

from tests.fixtures.server import settings_for
from threadline.assembly import open_keeper
from threadline.checkpointers.serde import KeyRing, UnknownKeyError, parse_keys
from threadline.privacy.names import ThreadNaming
from threadline.server.turns import TurnRunner

KEY_A = "a" * 32
KEY_B = "b" * 32
ID_KEY = "rotation-test-id-key"
# The threads' storage keys as the server makes them (ids hashed); more than a --batch.
THREADS = [ThreadNaming(ID_KEY.encode()).stored_key(f"rot-{n}") for n in range(9)]
ROOT = Path(__file__).resolve().parent.parent


def env_of(values: dict[str, Any]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    return {**base, **{f"THREADLINE_{k.upper()}": str(v) for k, v in values.items()}}


async def contents(settings: Any) -> dict[str, Any]:
    """Every thread's state, and the archived thread's state from its object."""
    from threadline.retention.archive import ArchivedThread, object_name

    async with open_keeper(settings) as (keeper, _):
        found: dict[str, Any] = {}
        for key in THREADS[:-1]:
            state = await keeper.graph.aget_state({"configurable": {"thread_id": key}})
            found[key] = state.values
        assert keeper.archive is not None
        data = await keeper.archive.get(object_name(THREADS[-1]))
        assert data is not None
        found[THREADS[-1]] = ArchivedThread.unseal(data, keeper.serde).values
        return found


def stored_tags(backend: str, store: dict[str, Any]) -> set[str]:
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(store["sqlite_path"]) as conn:
            rows = conn.execute(
                "SELECT type FROM checkpoints UNION SELECT type FROM writes "
                "UNION SELECT substr(title, 1, instr(substr(title, 6), ':') + 4) "
                "FROM threadline_threads"
            )
            return {r[0] for r in rows if r[0] and "+" in r[0]}
    with psycopg.connect(store["postgres_url"]) as conn:
        rows = conn.execute(
            "SELECT type FROM checkpoint_blobs UNION SELECT type FROM checkpoint_writes "
            "UNION SELECT checkpoint -> '$enc_values' ->> 0 FROM checkpoints "
            "UNION SELECT metadata -> '$enc' ->> 0 FROM checkpoints "
            "UNION SELECT split_part(title, ':', 2) FROM threadline_threads"
        ).fetchall()
        return {r[0] for r in rows if r[0] and "+" in r[0]}


@pytest.mark.parametrize("backend", ["postgres", "tiered", "sqlite"])
async def test_rotate_killed_resumed_then_old_key_dropped(
    backend: str, backend_stores: Any, tmp_path: Path
) -> None:
    common = {
        "id_key": ID_KEY,  # a key ring needs a stable one
        "checkpointer": backend,
        "model": "fake",
        "archive_url": f"file://{tmp_path / 'archive'}",
        "audit_log_path": tmp_path / "audit.jsonl",
        **backend_stores[backend],
    }
    under_a = settings_for(aes_key=KEY_A, **common)
    async with open_keeper(under_a) as (keeper, _):
        runner = TurnRunner(keeper.graph, keeper=keeper)
        for key in THREADS:
            for text in (f"hello {key}", "more", "and more"):
                await runner.invoke(
                    {"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": key}}
                )
        record = await keeper.records.aget_thread_record(THREADS[-1])
        assert record is not None and await keeper.archive_thread(record)
    before = await contents(under_a)

    only_b = settings_for(aes_keys=f"b:{KEY_B}", **common)
    with pytest.raises(UnknownKeyError):  # B alone cannot read what A wrote
        await contents(only_b)

    ring = settings_for(aes_keys=f"b:{KEY_B},a:{KEY_A}", **common)
    ring_env = env_of({**common, "aes_keys": f"b:{KEY_B},a:{KEY_A}"})
    killed = subprocess.run(
        [sys.executable, "-m", "tests.killed_rotation", "3"],
        env=ring_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Under B: records (and SQLite's stock rows) name it, Postgres rows are bound to their place.
    under_b = ("+aes-b", "+" + KeyRing(parse_keys(f"b:{KEY_B}")).current_name)
    under_a_only = ("+aes", "+" + KeyRing([("a", KEY_A.encode())], named=False).current_name)
    tags = stored_tags(backend, backend_stores[backend])
    assert any(t.endswith(under_b) for t in tags) and any(t.endswith(under_a_only) for t in tags)
    assert await contents(ring) == before  # part-way: everything reads under the ring

    cli = str(Path(sys.executable).parent / "threadline")
    done = subprocess.run(
        [cli, "keys", "rotate", "--batch", "7"],
        env=ring_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "re-sealed 1 of 1 archive objects" in done.stdout
    assert all(t.endswith(under_b) for t in stored_tags(backend, backend_stores[backend]))

    assert await contents(only_b) == before  # A dropped: everything still reads
    async with open_keeper(only_b) as (keeper, _):
        await keeper.restore(THREADS[-1])
        runner = TurnRunner(keeper.graph, keeper=keeper)
        await runner.invoke(
            {"messages": [HumanMessage("after")]}, {"configurable": {"thread_id": THREADS[0]}}
        )
        state = await keeper.graph.aget_state({"configurable": {"thread_id": THREADS[0]}})
        assert len(state.values["messages"]) == len(before[THREADS[0]]["messages"]) + 2
