"""Staged Redis changes waiting for their commit.

A write stages its Redis copy under a token and, once Postgres has it, the token is kept
here: the writer's next Redis call on that entry carries the commit (no extra round trip),
or a timer commits it after `COMMIT_DELAY_SECONDS`. Until then other replicas read that
entry from Postgres, so Redis never serves what Postgres may not hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from threadline.checkpointers.tiered.tasks import BackgroundTasks

# How long a staged change may wait for the writer's next call to carry its commit.
COMMIT_DELAY_SECONDS = 0.25

Key = tuple[str, str]
# Commits `tokens` of an entry in Redis; False if Redis could not be reached.
Commit = Callable[[Key, Sequence[str]], Awaitable[bool]]


class StagedCommits:
    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._uncommitted: dict[Key, list[str]] = {}
        self._due: set[Key] = set()
        self._tasks = BackgroundTasks()

    def take(self, key: Key) -> list[str]:
        """The entry's tokens, for a Redis call on it to carry (`keep` them if it fails)."""
        return self._uncommitted.pop(key, [])

    def keep(self, key: Key, tokens: Sequence[str]) -> None:
        if tokens:
            self._uncommitted.setdefault(key, []).extend(tokens)

    def durable(self, key: Key, token: str) -> None:
        """Postgres has the change staged under `token`: commit it soon."""
        self.keep(key, [token])
        if key not in self._due:
            self._due.add(key)
            self._tasks.spawn(self._commit_soon(key))

    async def _commit_soon(self, key: Key) -> None:
        """Commit unless the writer's next call has carried the tokens already."""
        await asyncio.sleep(COMMIT_DELAY_SECONDS)
        self._due.discard(key)
        await self.commit_now(key)

    async def commit_now(self, key: Key) -> None:
        tokens = self.take(key)
        if tokens and not await self._commit(key, tokens):
            self.keep(key, tokens)

    async def aclose(self) -> None:
        """Commit what is still staged (else other replicas read around it for a while)."""
        for key in list(self._uncommitted):
            await self.commit_now(key)
        await self._tasks.aclose()
