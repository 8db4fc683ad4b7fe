"""The Postgres turn locks: exclusive across processes, one session per process however many
turns run, nothing left held by a waiter that gave up, and a lost session is replaced.

Each `open_turn_locks` below stands for one server process (its own Postgres session).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.server import settings_for
from threadline import locks
from threadline.checkpointers.dynamodb.table import Table
from threadline.dev.services import dynamodb_client
from threadline.locks import (
    DynamoDBTurnLocks,
    FirestoreTurnLocks,
    ThreadBusyError,
    TurnLocks,
    open_turn_locks,
)

TURNS = 40


@contextlib.asynccontextmanager
async def process_locks(postgres_url: str) -> AsyncIterator[TurnLocks]:
    async with open_turn_locks(
        settings_for(checkpointer="postgres", postgres_url=postgres_url)
    ) as locks:
        yield locks


def advisory_holders(postgres_url: str) -> list[int]:
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchall()
    return [pid for (pid,) in rows]


async def test_forty_turns_in_flight_hold_their_locks_on_one_session(postgres_db_url: str) -> None:
    keys = [f"many-{n}" for n in range(TURNS)]
    async with process_locks(postgres_db_url) as mine, process_locks(postgres_db_url) as other:
        async with contextlib.AsyncExitStack() as held:
            await asyncio.gather(*(held.enter_async_context(mine.hold([key], 2.0)) for key in keys))
            holders = await asyncio.to_thread(advisory_holders, postgres_db_url)
            assert len(holders) == TURNS and len(set(holders)) == 1, holders
            for key in (keys[0], keys[-1]):
                with pytest.raises(ThreadBusyError):
                    async with other.hold([key], 0.1):
                        pass
        async with other.hold(keys, 1.0):  # all released
            pass


async def test_a_waiter_takes_the_lock_as_soon_as_the_holder_lets_go(postgres_db_url: str) -> None:
    async with process_locks(postgres_db_url) as first, process_locks(postgres_db_url) as second:
        order: list[str] = []

        async def holder() -> None:
            async with first.hold(["handover"], 1.0):
                order.append("first")
                await asyncio.sleep(0.3)
                order.append("first done")

        task = asyncio.create_task(holder())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        async with second.hold(["handover"], 5.0):
            order.append("second")
            waited = time.monotonic() - started
        await task
    assert order == ["first", "first done", "second"]
    assert waited < 1.0, waited  # polled, not timed out


async def test_turns_of_one_process_exclude_each_other(postgres_db_url: str) -> None:
    """Session locks are reentrant in Postgres; two turns of one process must still queue."""
    async with process_locks(postgres_db_url) as locks, locks.hold(["same"], 1.0):
        with pytest.raises(ThreadBusyError):
            async with locks.hold(["same"], 0.1):
                pass


async def test_a_waiter_that_gives_up_leaves_nothing_held(postgres_db_url: str) -> None:
    async with process_locks(postgres_db_url) as first, process_locks(postgres_db_url) as second:
        for _ in range(20):  # cancel at varied points of the waiter's polling
            async with first.hold(["cancel"], 1.0):
                waiter = asyncio.create_task(second.hold(["cancel"], 5.0).__aenter__())
                await asyncio.sleep(0.013)
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
        await asyncio.sleep(0.05)
        assert await asyncio.to_thread(advisory_holders, postgres_db_url) == []


async def test_a_lost_session_is_replaced_and_its_holder_finishes(postgres_db_url: str) -> None:
    async with process_locks(postgres_db_url) as locks:
        async with locks.hold(["lost"], 1.0):
            [pid] = await asyncio.to_thread(advisory_holders, postgres_db_url)
            with psycopg.connect(postgres_db_url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        async with locks.hold(["lost"], 1.0):  # a new session
            [new_pid] = await asyncio.to_thread(advisory_holders, postgres_db_url)
        assert new_pid != pid


@contextlib.asynccontextmanager
async def two_processes_leases(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Any]]:
    """Two processes' lease locks on one store (two clients), with 3-second leases."""
    if store == "dynamodb":
        endpoint = request.getfixturevalue("dynamodb_endpoint")
        table = f"locks-{uuid.uuid4().hex[:8]}"
        Table(dynamodb_client(endpoint), table).create()
        monkeypatch.setattr(locks, "DYNAMODB_LEASE_SECONDS", 3.0)
        yield tuple(DynamoDBTurnLocks(dynamodb_client(endpoint), table) for _ in range(2))
        return
    from google.cloud.firestore import AsyncClient

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", request.getfixturevalue("firestore_host"))
    monkeypatch.setattr(locks, "FIRESTORE_LEASE_SECONDS", 3.0)
    prefix = f"locks{uuid.uuid4().hex[:8]}"
    clients = [AsyncClient(project="threadline-test") for _ in range(2)]
    try:
        yield tuple(FirestoreTurnLocks(client, prefix) for client in clients)
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("store", ["dynamodb", "firestore"])
async def test_leases_exclude_other_processes_and_lapse_when_the_holder_dies(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held thread is busy for the other process, renewed past its first lease, free once
    released; a holder that died without releasing (never renewed) keeps it until it lapses."""
    async with two_processes_leases(store, request, monkeypatch) as (first, second):
        async with first.hold(["t1"], 1.0):
            with pytest.raises(ThreadBusyError):
                async with second.hold(["t1"], 0.3):
                    pass
            async with second.hold(["t2"], 0.3):  # other threads are free
                pass
            await asyncio.sleep(4.0)  # renewed past its first lease: still held
            with pytest.raises(ThreadBusyError):
                async with second.hold(["t1"], 0.3):
                    pass
        async with second.hold(["t1"], 0.3):  # released
            pass
        assert await first._take("t3", "a-process-that-died")  # taken, then never renewed
        started = time.monotonic()
        async with second.hold(["t3"], 8.0):
            waited = time.monotonic() - started
        assert 1.0 < waited < 6.0
