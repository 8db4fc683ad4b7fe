"""One turn at a time per thread: a lock held for the whole request that runs the turn.

Postgres-backed deployments (postgres, tiered) use session-level advisory locks over one shared
connection per process, so a lock dies with its session when a replica crashes; the stock Redis
backend uses a Redis lease that a holder keeps renewing; memory and SQLite are single-process
and use asyncio locks. A second turn waits up to the configured timeout and then gets
`ThreadBusyError` (HTTP 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio

from threadline.settings import Settings

log = logging.getLogger("threadline.server")

REDIS_LEASE_SECONDS = 30.0
DYNAMODB_LEASE_SECONDS = 30.0
FIRESTORE_LEASE_SECONDS = 30.0
POLL_SECONDS = 0.02  # a busy thread's waiter asks again this often (Postgres and Redis)
CONNECT_TIMEOUT_SECONDS = 5
TRY_LOCK_SQL = (
    "SELECT pg_try_advisory_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i) ORDER BY i"
)
UNLOCK_SQL = (
    "SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i) ORDER BY i"
)
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


class _AdvisorySession:
    """One Postgres session that holds a process's advisory locks, batching its statements.

    Every try-lock and unlock that callers ask for while a statement is in flight goes out in the
    next single statement, so the lock traffic of N concurrent turns costs one round trip, not N,
    and the whole process needs one connection however many turns it runs. A broken session
    loses its locks (Postgres releases them); its generation number tells holders so.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: Any = None
        self._pending: list[tuple[str, int, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io = asyncio.Lock()
        self.generation = 0

    def try_lock(self, lock_id: int) -> asyncio.Future[bool]:
        return self._submit("lock", lock_id)

    def unlock(self, lock_id: int) -> asyncio.Future[bool]:
        return self._submit("unlock", lock_id)

    async def ping(self) -> None:
        async with self._io:
            await self._execute("SELECT 1", ())

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    def _submit(self, op: str, lock_id: int) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((op, lock_id, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self._io:
                    # Unlocks first: a released key may be the one a waiter asks for.
                    for op, sql in (("unlock", UNLOCK_SQL), ("lock", TRY_LOCK_SQL)):
                        calls = [(lock_id, f) for o, lock_id, f in batch if o == op]
                        if calls:
                            rows = await self._execute(sql, ([lock_id for lock_id, _ in calls],))
                            for (_, future), (ok,) in zip(calls, rows, strict=True):
                                if not future.done():
                                    future.set_result(bool(ok))
            except LockBackendError as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                )
                self.generation += 1
            cursor = await self._conn.execute(sql, params)
            return list(await cursor.fetchall())
        except psycopg.Error as exc:
            if self._conn is not None:
                await self._conn.close()  # its locks are gone with it; the next call reconnects
            self._conn = None
            raise LockBackendError(
                f"thread locks unavailable: Postgres refused ({type(exc).__name__})"
            ) from None


class PostgresTurnLocks(_OneLockPerKey):
    """Session-level advisory locks, polled, over one shared connection per process.

    Holding a connection per in-flight turn (transaction-level locks) made connections grow with
    concurrent turns times processes until Postgres refused clients (a default server allows 100).
    A lock dies with the session, so a crashed replica's locks are released at once. Session
    locks are reentrant within a session, so turns of this process take an asyncio lock per key
    first and only one of them at a time asks Postgres.
    """

    def __init__(self, conninfo: str) -> None:
        self._session = _AdvisorySession(conninfo)
        self._local = LocalTurnLocks()

    @asynccontextmanager
    async def _hold_one(self, key: str, deadline: float) -> AsyncIterator[None]:
        async with self._local.hold([key], _remaining(deadline)):
            lock_id = advisory_key(key)
            generation = await self._acquire(lock_id, key, deadline)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self._release(lock_id, generation)

    async def _acquire(self, lock_id: int, key: str, deadline: float) -> int:
        while True:
            attempt = self._session.try_lock(lock_id)
            try:
                taken = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(lambda f: self._release_if_taken(f, lock_id))
                raise
            if taken:
                return self._session.generation
            if time.monotonic() >= deadline:
                raise ThreadBusyError(key)
            await asyncio.sleep(min(POLL_SECONDS, _remaining(deadline)))

    def _release_if_taken(self, attempt: asyncio.Future[bool], lock_id: int) -> None:
        """A caller cancelled while its try-lock was in flight must not leave the lock held."""
        if not attempt.cancelled() and attempt.exception() is None and attempt.result():
            generation = self._session.generation
            asyncio.get_running_loop().create_task(self._release(lock_id, generation))

    async def _release(self, lock_id: int, generation: int) -> None:
        if generation != self._session.generation:
            log.warning("the thread lock session was lost while a turn held a lock")
            return
        try:
            if not await self._session.unlock(lock_id):
                log.warning("a thread lock was not held at release (its session was lost)")
        except LockBackendError as exc:
            log.warning("could not release a thread lock (its session is gone): %s", exc)

    @asynccontextmanager
    async def setup_guard(self) -> AsyncIterator[None]:
        """Polled like every lock here, so no statement waits holding a snapshot that a
        holder's `CREATE INDEX CONCURRENTLY` would wait for."""
        try:
            async with self.hold([SETUP_KEY], SETUP_WAIT_SECONDS):
                yield
        except ThreadBusyError:
            raise LockBackendError(
                "another replica has been setting up the store too long"
            ) from None

    async def ping(self) -> None:
        await self._session.ping()

    async def aclose(self) -> None:
        await self._session.close()


@asynccontextmanager
async def _renewed_until_released(
    renewal: Coroutine[Any, Any, None], release: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """Hold a lease: `renewal` runs beside the body; afterwards it stops and the lease is
    released, shielded from cancellation (a cancelled turn still lets go of its thread)."""
    renewing = asyncio.create_task(renewal)
    try:
        yield
    finally:
        renewing.cancel()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await release()


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
            sleep=POLL_SECONDS,
            blocking_timeout=_remaining(deadline),
            thread_local=False,
        )
        try:
            acquired = await lock.acquire()
        except (RedisError, RuntimeError) as exc:  # RuntimeError: uvloop, a node killed mid-call
            raise LockBackendError(f"Redis unavailable for the thread lock: {exc}") from None
        if not acquired:
            raise ThreadBusyError(key)

        async def release() -> None:
            try:
                await lock.release()
            except (LockError, RedisError, RuntimeError) as exc:
                log.warning("could not release a thread lock (it will expire): %s", exc)

        async with _renewed_until_released(self._renew(lock), release):
            yield

    @staticmethod
    async def _renew(lock: Any) -> None:
        from redis.exceptions import LockError, RedisError

        while True:
            await asyncio.sleep(REDIS_LEASE_SECONDS / 3)
            try:
                await lock.reacquire()
            except (LockError, RedisError, RuntimeError) as exc:
                log.warning("could not renew a thread lock: %s", exc)

    def setup_guard(self) -> AbstractAsyncContextManager[None]:
        return self.hold([SETUP_KEY], SETUP_WAIT_SECONDS)

    async def ping(self) -> None:
        await self._client.ping()


class _LeaseLocks(_OneLockPerKey):
    """A lease per thread in a store without locks of its own: taken by a conditional write
    that succeeds only if no live lease exists, polled with backoff while busy (requests are
    billed), renewed while the turn runs, released by its owner; a holder that dies lets it
    lapse. Leases use each host's clock. Subclasses say how to take, renew and release."""

    max_poll_seconds = 0.2

    async def _take(self, key: str, owner: str) -> bool:
        raise NotImplementedError

    async def _extend(self, key: str, owner: str) -> None:
        raise NotImplementedError

    async def _release(self, key: str, owner: str) -> None:
        raise NotImplementedError

    async def _guarded(self, call: Any) -> Any:
        """`call` awaited; the store's own errors become `LockBackendError`."""
        raise NotImplementedError

    @asynccontextmanager
    async def _hold_one(self, key: str, deadline: float) -> AsyncIterator[None]:
        owner = uuid.uuid4().hex
        wait = POLL_SECONDS
        while not await self._guarded(self._take(key, owner)):
            if time.monotonic() >= deadline:
                raise ThreadBusyError(key)
            await asyncio.sleep(min(wait, _remaining(deadline)))
            wait = min(wait * 2, self.max_poll_seconds)

        async def release() -> None:
            try:
                await self._guarded(self._release(key, owner))
            except LockBackendError as exc:
                log.warning("could not release a thread lock (it will expire): %s", exc)

        async with _renewed_until_released(self._renew(key, owner), release):
            yield

    async def _renew(self, key: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds() / 3)
            try:
                await self._guarded(self._extend(key, owner))
            except LockBackendError as exc:
                log.warning("could not renew a thread lock: %s", exc)

    def _lease_seconds(self) -> float:
        raise NotImplementedError

    def setup_guard(self) -> AbstractAsyncContextManager[None]:
        # The stores these run on create what they need idempotently: racing is safe.
        return contextlib.nullcontext()


class DynamoDBTurnLocks(_LeaseLocks):
    """Leases as items `l#<key>` of the saver's DynamoDB table (conditional put, update and
    delete)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def _lease_seconds(self) -> float:
        return DYNAMODB_LEASE_SECONDS

    async def _guarded(self, call: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await call
        except (BotoCoreError, ClientError) as exc:
            raise LockBackendError(f"DynamoDB unavailable for the thread lock: {exc}") from None

    @staticmethod
    def _item_key(key: str) -> dict[str, Any]:
        return {"pk": {"S": f"l#{key}"}, "sk": {"S": "lock"}}

    def _lease(self, owner: str) -> dict[str, Any]:
        until = time.time() + self._lease_seconds()
        return {
            "kind": {"S": "lock"},
            "owner": {"S": owner},
            "lease_until": {"N": str(int(until * 1000))},
            "expires": {"N": str(int(until) + 3600)},  # the table's TTL tidies up after
        }

    async def _take(self, key: str, owner: str) -> bool:
        return await asyncio.to_thread(self._take_now, key, owner)

    def _take_now(self, key: str, owner: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.put_item(
                TableName=self._table,
                Item={**self._item_key(key), **self._lease(owner)},
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now",
                ExpressionAttributeValues={":now": {"N": str(int(time.time() * 1000))}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def _extend(self, key: str, owner: str) -> None:
        lease = self._lease(owner)
        await asyncio.to_thread(
            self._client.update_item,
            TableName=self._table,
            Key=self._item_key(key),
            UpdateExpression="SET lease_until = :until, expires = :expires",
            ConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":until": lease["lease_until"],
                ":expires": lease["expires"],
                ":owner": {"S": owner},
            },
        )

    async def _release(self, key: str, owner: str) -> None:
        await asyncio.to_thread(self._release_now, key, owner)

    def _release_now(self, key: str, owner: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.delete_item(
                TableName=self._table,
                Key=self._item_key(key),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except ClientError as exc:  # taken over after our lease lapsed: nothing to release
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    async def ping(self) -> None:
        await self._guarded(asyncio.to_thread(self._client.describe_table, TableName=self._table))


class FirestoreTurnLocks(_LeaseLocks):
    """Leases as documents `<prefix>_locks/<key>`: created if absent, or taken over once
    lapsed with the read's update time as precondition (so two takers never both win)."""

    def __init__(self, client: Any, collection_prefix: str) -> None:
        self._client = client
        self._locks = client.collection(f"{collection_prefix}_locks")

    def _lease_seconds(self) -> float:
        return FIRESTORE_LEASE_SECONDS

    async def _guarded(self, call: Any) -> Any:
        from google.api_core.exceptions import GoogleAPIError

        try:
            return await call
        except GoogleAPIError as exc:
            raise LockBackendError(f"Firestore unavailable for the thread lock: {exc}") from None

    def _doc(self, key: str) -> Any:
        from urllib.parse import quote

        return self._locks.document(quote(key, safe=""))

    def _lease(self, owner: str) -> dict[str, Any]:
        return {"owner": owner, "lease_until": time.time() + self._lease_seconds()}

    async def _take(self, key: str, owner: str) -> bool:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition

        doc = self._doc(key)
        try:
            await doc.create(self._lease(owner))
            return True
        except AlreadyExists:
            pass
        found = await doc.get()
        if not found.exists:  # released meanwhile: the next try creates it
            return False
        if (found.to_dict() or {}).get("lease_until", 0) >= time.time():
            return False
        option = self._client.write_option(last_update_time=found.update_time)
        try:
            await doc.update(self._lease(owner), option=option)
        except FailedPrecondition:  # another taker won the lapsed lease
            return False
        return True

    async def _extend(self, key: str, owner: str) -> None:
        await self._change(key, owner, delete=False)

    async def _release(self, key: str, owner: str) -> None:
        await self._change(key, owner, delete=True)

    async def _change(self, key: str, owner: str, *, delete: bool) -> None:
        """Renew (or delete) the lease if it is still ours."""
        from google.api_core.exceptions import FailedPrecondition, NotFound

        doc = self._doc(key)
        found = await doc.get()
        if not found.exists or (found.to_dict() or {}).get("owner") != owner:
            return  # lapsed and taken over: nothing of ours to change
        option = self._client.write_option(last_update_time=found.update_time)
        with contextlib.suppress(FailedPrecondition, NotFound):
            if delete:
                await doc.delete(option=option)
            else:
                await doc.update(self._lease(owner), option=option)

    async def ping(self) -> None:
        await self._guarded(self._locks.document("ping").get())


@asynccontextmanager
async def open_turn_locks(settings: Settings) -> AsyncIterator[TurnLocks]:
    """The lock that matches the checkpointer: shared wherever the threads are shared."""
    kind = settings.checkpointer
    if kind in ("postgres", "tiered") and settings.postgres_url is not None:
        locks = PostgresTurnLocks(settings.postgres_url.get_secret_value())
        try:
            yield locks
        finally:
            await locks.aclose()
    elif kind == "redis" and settings.redis_url is not None:
        from threadline.checkpointers.redis_clients import is_cluster, redis_client

        url = settings.redis_url.get_secret_value()
        cluster = await is_cluster(url, settings.redis_cluster)
        client = redis_client(url, cluster=cluster, pool_size=settings.redis_pool_size)
        try:
            yield RedisTurnLocks(client)
        finally:
            await client.aclose()
    elif kind == "dynamodb":
        from threadline.checkpointers.dynamodb import dynamodb_client

        client = dynamodb_client(settings.dynamodb_endpoint_url)
        try:
            yield DynamoDBTurnLocks(client, settings.dynamodb_table)
        finally:
            client.close()
    elif kind == "firestore":
        from google.cloud.firestore import AsyncClient

        client = AsyncClient(project=settings.firestore_project)
        try:
            yield FirestoreTurnLocks(client, settings.firestore_collection)
        finally:
            client.close()
    else:
        yield LocalTurnLocks()
