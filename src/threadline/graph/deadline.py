"""Bounding a blocking call in time, for the sync graph path.

`asyncio.wait_for` gives the async path its timeout; a sync call cannot be interrupted, so it
runs on a daemon thread (with the caller's context, so tracing callbacks still see it) while
the caller waits at most `timeout` seconds. A call that overruns is abandoned, not joined: a
daemon thread never holds up the turn or the interpreter's exit.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_with_deadline(call: Callable[[], T], timeout: float, name: str = "threadline-call") -> T:
    """`call()`'s result, or `TimeoutError` once `timeout` seconds have passed."""
    if timeout <= 0:
        raise TimeoutError("no time left for the call")
    outcome: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome.put((True, context.run(call)))
        except BaseException as exc:  # handed to the caller, who decides
            outcome.put((False, exc))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        ok, value = outcome.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"the call took longer than {timeout:.3g}s") from None
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
