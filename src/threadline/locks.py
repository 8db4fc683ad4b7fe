"""One turn at a time per thread: a lock held for the whole request that runs the turn.

Postgres-backed deployments (postgres, tiered) use transaction-scoped advisory locks, so a lock
dies with its connection when a replica crashes; the stock Redis backend uses a Redis lease that a
holder keeps renewing; memory and SQLite are single-process and use asyncio locks. A second turn
waits up to the configured timeout and then gets `ThreadBusyError` (HTTP 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio

from threadline.checkpointers import open_pool
from threadline.settings import Settings

log = logging.getLogger("threadline.server")

REDIS_LEASE_SECONDS = 30.0
REDIS_POLL_SECONDS = 0.02
LOCK_POOL_PER_SAVER_CONNECTION = 4
POOL_WAIT_SECONDS = 5.0  # waiting for a connection is capacity, not the thread's turn
SETUP_KEY = "threadline-setup"
SETUP_WAIT_SECONDS = 120.0
SETUP_POLL_SECONDS = 0.1


class ThreadBusyError(Exception):
    """Another turn holds the thread for longer than the caller may wait."""


class LockBackendError(Exception):
    """The lock store could not be reached or had no connection to spare."""


class TurnLocks(Protocol):
    def hold(self, keys: Sequence[str], timeout: float) -> AbstractAsyncContextManager[None]:
        """Hold every key (taken in sorted order, so batches never deadlock)."""
        ...

    def setup_guard(self) -> AbstractAsyncContextManager[None]:
        """Held while the store sets itself up, so replicas starting together never race."""
        ...

    async def ping(self) -> None: ...


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


class _OneLockPerKey:
    """Holds several keys by taking each key's own lock in sorted order (no deadlocks)."""

    def _hold_one(self, key: str, deadline: float) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    @asynccontextmanager
    async def hold(self, keys: Sequence[str], timeout: float) -> AsyncIterator[None]:
        deadline = time.monotonic() + timeout
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self._hold_one(key, deadline))
            yield


class LocalTurnLocks(_OneLockPerKey):
    """asyncio locks for embedded backends, which serve from a single process."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def _hold_one(self, key: str, deadline: float) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            if lock.locked():  # (wait_for with no time left never tries a free lock)
                try:
                    await asyncio.wait_for(lock.acquire(), _remaining(deadline))
                except TimeoutError:
                    raise ThreadBusyError(key) from None
            else:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    def setup_guard(self) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def ping(self) -> None:
        return None


def advisory_key(key: str) -> int:
    """A stable signed 64-bit advisory-lock id for a thread key."""
    digest = hashlib.blake2b(f"threadline-turn:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresTurnLocks:
    """Transaction-level advisory locks; Postgres queues waiters and enforces the timeout.

    The connection is taken from the pool by hand, not with `async with`, so that only the
    acquisition's errors become lock errors and a failed release never fails a finished turn.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @asynccontextmanager
    async def hold(self, keys: Sequence[str], timeout: float) -> AsyncIterator[None]:
        import psycopg
        from psycopg_pool import PoolTimeout

        deadline = time.monotonic() + timeout
        try:
            conn = await self._pool.getconn(timeout=max(timeout, POOL_WAIT_SECONDS))
        except PoolTimeout:
            raise LockBackendError(
                "thread locks unavailable: no Postgres connection within "
                f"{max(timeout, POOL_WAIT_SECONDS):g}s (Postgres down, or every connection busy)"
            ) from None
        except psycopg.OperationalError as exc:
            raise LockBackendError(
                f"thread locks unavailable: Postgres refused ({type(exc).__name__})"
            ) from None
        try:
            try:
                await conn.execute("BEGIN")
                for key in sorted(set(keys)):
                    await self._lock(conn, advisory_key(key), _remaining(deadline), key)
            except psycopg.errors.LockNotAvailable:
                raise ThreadBusyError(keys[0]) from None
            except psycopg.OperationalError as exc:
                raise LockBackendError(
                    f"thread locks unavailable: Postgres refused ({type(exc).__name__})"
                ) from None
            yield
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.execute("ROLLBACK")  # ends the transaction: the locks go with it
                except psycopg.Error as exc:
                    log.warning("thread lock connection failed on release: %s", exc)
                await self._pool.putconn(conn)

    @staticmethod
    async def _lock(conn: Any, lock_id: int, seconds: float, key: str) -> None:
        millis = int(seconds * 1000)
        if millis <= 0:  # lock_timeout 0 would mean "wait forever"
            cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (lock_id,))
            row = await cursor.fetchone()
            if not row["ok"]:
                raise ThreadBusyError(key)
            return
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{millis}ms",))
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))

    @asynccontextmanager
    async def setup_guard(self) -> AsyncIterator[None]:
        """A session-level lock, polled: a statement waiting on a lock (or an open transaction)
        would hold a snapshot that the holder's `CREATE INDEX CONCURRENTLY` waits for."""
        lock_id = advisory_key(SETUP_KEY)
        async with self._pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
            deadline = time.monotonic() + SETUP_WAIT_SECONDS
            while True:
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (lock_id,))
                if (await cursor.fetchone())["ok"]:
                    break
                if time.monotonic() > deadline:
                    raise LockBackendError("another replica has been setting up the store too long")
                await asyncio.sleep(SETUP_POLL_SECONDS)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))

    async def ping(self) -> None:
        async with self._pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")


class RedisTurnLocks(_OneLockPerKey):
    """A Redis lease per thread, renewed while the turn runs; it expires if the holder dies."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @asynccontextmanager
    async def _hold_one(self, key: str, deadline: float) -> AsyncIterator[None]:
        from redis.exceptions import LockError, RedisError

        lock = self._client.lock(
            f"threadline:turn-lock:{{{key}}}",
            timeout=REDIS_LEASE_SECONDS,
            sleep=REDIS_POLL_SECONDS,
            blocking_timeout=_remaining(deadline),
            thread_local=False,
        )
        try:
            acquired = await lock.acquire()
        except RedisError as exc:
            raise LockBackendError(f"Redis unavailable for the thread lock: {exc}") from None
        if not acquired:
            raise ThreadBusyError(key)
        renewal = asyncio.create_task(self._renew(lock))
        try:
            yield
        finally:
            renewal.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
                try:
                    await lock.release()
                except (LockError, RedisError) as exc:
                    log.warning("could not release a thread lock (it will expire): %s", exc)

    @staticmethod
    async def _renew(lock: Any) -> None:
        from redis.exceptions import LockError, RedisError

        while True:
            await asyncio.sleep(REDIS_LEASE_SECONDS / 3)
            try:
                await lock.reacquire()
            except (LockError, RedisError) as exc:
                log.warning("could not renew a thread lock: %s", exc)

    def setup_guard(self) -> AbstractAsyncContextManager[None]:
        return self.hold([SETUP_KEY], SETUP_WAIT_SECONDS)

    async def ping(self) -> None:
        await self._client.ping()


@asynccontextmanager
async def open_turn_locks(settings: Settings) -> AsyncIterator[TurnLocks]:
    """The lock that matches the checkpointer: shared wherever the threads are shared."""
    kind = settings.checkpointer
    if kind in ("postgres", "tiered") and settings.postgres_url is not None:
        size = settings.postgres_pool_size * LOCK_POOL_PER_SAVER_CONNECTION
        async with open_pool(settings.postgres_url.get_secret_value(), size) as pool:
            yield PostgresTurnLocks(pool)
    elif kind == "redis" and settings.redis_url is not None:
        from threadline.checkpointers.redis_clients import is_cluster, redis_client

        url = settings.redis_url.get_secret_value()
        cluster = await is_cluster(url, settings.redis_cluster)
        client = redis_client(url, cluster=cluster, pool_size=settings.redis_pool_size)
        try:
            yield RedisTurnLocks(client)
        finally:
            await client.aclose()
    else:
        yield LocalTurnLocks()
