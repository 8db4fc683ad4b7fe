"""The thread locks a streamed request holds, for its turn to let go of once stored.

The admission dependency takes the locks and publishes them here (a context variable of the
request); the turn, running in a task of its own, releases them when it has been stored, so
how slowly the client reads never keeps a thread busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class HeldThreads:
    """The thread locks of one request, and the streamed turn (if any) still running on them."""

    release: Callable[[], Awaitable[None]]
    turn: asyncio.Future[None] | None = None


# The threads the current streamed request holds (set by `admission.turn_held`).
HELD: ContextVar[HeldThreads | None] = ContextVar("threadline_held_threads", default=None)


def running_turn(turn: asyncio.Future[None]) -> None:
    """Tell the request holding the threads that `turn` runs on them."""
    if (held := HELD.get()) is not None:
        held.turn = turn


async def release_turn() -> None:
    """Let this request's threads go now: its turn is stored, or failed."""
    if (held := HELD.get()) is not None:
        await held.release()
