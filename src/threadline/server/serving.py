"""What the app serves with while its lifespan runs, in one object.

The LangServe runnables, the admission dependency and the routes are made when the app is
built; the saver and the thread locks only exist while the lifespan runs. They all read the
running `Serving` from one `ServingSlot`, which answers 503 outside the lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException

from threadline.locks import TurnLocks
from threadline.retention import ThreadKeeper
from threadline.server.turns import TurnRunner


@dataclass(frozen=True)
class Serving:
    """The turn runner (the graph on the opened saver), the thread locks, and retention's
    operations on the same graph."""

    runner: TurnRunner
    locks: TurnLocks
    keeper: ThreadKeeper


class ServingSlot:
    """Holds the `Serving` of the running lifespan, if any."""

    def __init__(self) -> None:
        self._serving: Serving | None = None

    def fill(self, serving: Serving | None) -> None:
        self._serving = serving

    @property
    def ready(self) -> bool:
        return self._serving is not None

    @property
    def current(self) -> Serving:
        if self._serving is None:
            raise HTTPException(503, "the server is starting or stopping")
        return self._serving
