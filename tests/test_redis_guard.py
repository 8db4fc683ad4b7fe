"""The Redis guard tells a slow Redis from a busy process.

The calls here are plain coroutines standing in for a Redis call's round trip: the guard only
times and counts them, so no Redis is needed to judge its decisions.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from threadline.checkpointers.tiered.guard import RedisGuard

TIMEOUT = 0.05


async def test_a_reply_that_waited_behind_other_replies_is_not_an_outage() -> None:
    """While this call's reply waited (the process busy with others), Redis kept answering:
    the call is retried, the breaker stays closed."""
    guard = RedisGuard(TIMEOUT, retry_seconds=1.0)
    attempts = 0

    async def late_first_reply() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(4 * TIMEOUT)
        return "entry"

    async def prompt_reply() -> str:
        await asyncio.sleep(TIMEOUT / 5)
        return "other"

    async def other_calls() -> None:
        for _ in range(10):
            await guard.call(prompt_reply)

    result, _ = await asyncio.gather(guard.call(late_first_reply), other_calls())
    assert result == "entry" and attempts == 2
    assert guard.available
    await guard.aclose()


async def test_a_redis_that_answers_nothing_fails_within_the_deadline() -> None:
    guard = RedisGuard(TIMEOUT, retry_seconds=1.0)

    async def no_reply() -> None:
        await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        await guard.call(no_reply)
    assert time.monotonic() - started < 4 * TIMEOUT
    await guard.aclose()


async def test_waiting_for_a_free_connection_is_not_counted_against_redis() -> None:
    """Three calls, one connection: the last waits twice the deadline for it, then answers."""
    guard = RedisGuard(TIMEOUT, retry_seconds=1.0, max_in_flight=1)
    sent: list[int] = []

    async def call(n: int) -> int:
        sent.append(n)
        await asyncio.sleep(TIMEOUT * 0.8)
        return n

    assert await asyncio.gather(*(guard.call(lambda n=n: call(n)) for n in range(3))) == [0, 1, 2]
    assert sent == [0, 1, 2]  # each sent once: none timed out in the queue
    await guard.aclose()
