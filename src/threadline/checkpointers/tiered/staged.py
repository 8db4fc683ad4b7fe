"""Staged Redis changes waiting for their commit.

A write stages its Redis copy under a token and, once Postgres has it, the token is kept
here: the writer's next Redis call on that entry carries the commit (no extra round trip),
or, at most `COMMIT_DELAY_SECONDS` later, one flush commits every entry still waiting, in one
round trip whatever their number. Until then other replicas read that entry from Postgres, so
Redis never serves what Postgres may not hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from threadline.checkpointers.tiered.tasks import BackgroundTasks

# How long a staged change may wait for the writer's next call to carry its commit.
COMMIT_DELAY_SECONDS = 0.25

Key = tuple[str, str]
# Commits the staged changes of the given entries in Redis; False if Redis could not be reached.
Commit = Callable[[Mapping[Key, Sequence[str]]], Awaitable[bool]]


class StagedCommits:
    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._uncommitted: dict[Key, list[str]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._tasks = BackgroundTasks()

    def take(self, key: Key) -> list[str]:
        """The entry's tokens, for a Redis call on it to carry (`keep` them if it fails)."""
        return self._uncommitted.pop(key, [])

    def keep(self, key: Key, tokens: Sequence[str]) -> None:
        if tokens:
            self._uncommitted.setdefault(key, []).extend(tokens)

    def durable(self, key: Key, token: str) -> None:
        """Postgres has the change staged under `token`: commit it soon.

        One timer for all entries, not a task per write: back-to-back turns carry their
        commits in their next call, and the flush commits the rest together."""
        self.keep(key, [token])
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(COMMIT_DELAY_SECONDS, self._flush_due)

    def _flush_due(self) -> None:
        self._flush = None
        if self._uncommitted:
            self._tasks.spawn(self.commit_all())

    async def commit_all(self) -> None:
        """Commit every entry still waiting, in one call; kept for later if it fails."""
        staged, self._uncommitted = self._uncommitted, {}
        if staged and not await self._commit(staged):
            for key, tokens in staged.items():
                self.keep(key, tokens)

    async def aclose(self) -> None:
        """Commit what is still staged (else other replicas read around it for a while)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await self.commit_all()
        await self._tasks.aclose()
