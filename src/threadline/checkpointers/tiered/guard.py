"""The Redis guard: a breaker and a deadline that allows for the event loop's own lag.

Every Redis call of the tiered saver goes through `call`. A failure opens the breaker for
`retry_seconds` (Redis is skipped meanwhile, `available` is False); a deadline is the Redis
timeout plus a multiple of how late the event loop currently runs callbacks, so a busy or
stalled loop is not mistaken for a slow Redis. The deadline starts once a connection is free
(at most `max_in_flight` calls run at once): waiting for one is this process's load, not
Redis's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from threadline.checkpointers.tiered.tasks import BackgroundTasks
from threadline.observability.metrics import HOT_BREAKER_OPEN

logger = logging.getLogger("threadline.checkpointers.tiered")

# What a Redis call raises when Redis fails it. uvloop raises RuntimeError ("the handler is
# closed") when redis-py writes to a connection whose node was killed under it (a cluster
# master SIGKILLed mid-call): that too is Redis failing, and Postgres serves instead.
REDIS_FAULTS = (RedisError, OSError, asyncio.TimeoutError, RuntimeError)
# Retries of a Redis call whose deadline fired late because the event loop had stalled.
STALL_RETRIES = 2
# The Redis deadline grows by this many times the event loop's current lag.
LAG_ALLOWANCE = 3
LAG_PROBE_SECONDS = 0.02

T = TypeVar("T")


class RedisGuard:
    def __init__(
        self,
        timeout_seconds: float,
        retry_seconds: float,
        on_failure: Callable[[], None] = lambda: None,
        *,
        max_in_flight: int = 256,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._answered_at = 0.0  # when Redis last answered a call of this process
        self.retry_seconds = retry_seconds
        self._on_failure = on_failure  # e.g. the journal must be reloaded before Redis again
        self._retry_at = 0.0
        self._loop_lag = 0.0
        self._tasks = BackgroundTasks()
        self._tasks.spawn(self._watch_loop_lag())

    @property
    def available(self) -> bool:
        """False while the breaker is open."""
        closed = time.monotonic() >= self._retry_at
        HOT_BREAKER_OPEN.set(0 if closed else 1)
        return closed

    def failed(self, exc: BaseException) -> None:
        """Open the breaker (and say so once per outage)."""
        if self.available:
            logger.warning(
                "Redis unavailable (%s); serving from Postgres for %.1fs",
                type(exc).__name__,
                self.retry_seconds,
            )
        self._retry_at = time.monotonic() + self.retry_seconds
        self._on_failure()

    async def call(self, make_call: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call under the Redis timeout, plus what the event loop is lagging.

        A busy loop delays replies that have long arrived, a deadline that fires late means
        the loop stalled (a synchronous node, a slow import), and other calls answered while
        this one waited means this process is still working through replies: none of them is
        Redis being slow. When any shows at the deadline, the call is retried (every Redis
        call here is idempotent) rather than Redis declared down.
        """
        loop = asyncio.get_running_loop()
        async with self._in_flight:
            for _ in range(STALL_RETRIES + 1):
                budget = self._budget()
                started = loop.time()
                try:
                    async with asyncio.timeout(budget):
                        result = await make_call()
                except TimeoutError:
                    stalled = loop.time() - started >= budget * 1.5 or self._budget() > budget
                    if not stalled and self._answered_at <= started:
                        break  # nothing answered while this call waited: Redis is down
                else:
                    self._answered_at = loop.time()
                    return result
        raise RedisTimeoutError(f"no answer from Redis within {budget:g}s")

    def _budget(self) -> float:
        return self.timeout_seconds + LAG_ALLOWANCE * self._loop_lag

    async def _watch_loop_lag(self) -> None:
        """Track how late this event loop runs callbacks (a decaying peak)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            lag = loop.time() - started - LAG_PROBE_SECONDS
            self._loop_lag = max(lag, self._loop_lag * 0.9)

    async def aclose(self) -> None:
        await self._tasks.aclose()
