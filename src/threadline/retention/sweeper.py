"""The sweep: find expired threads in bounded batches and apply the deployment's strategy.

One sweeper at a time: a sweep holds a lease (the turn lock of a reserved key: an advisory
lock on Postgres, a renewed lease on Redis), and another replica's sweep that finds it taken
does nothing. Each thread is handled under its own turn lock, taken without waiting (a thread
busy with a turn is not idle after all), after reading its record again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from threadline.checkpointers.records import ThreadRecord
from threadline.locks import ThreadBusyError, TurnLocks
from threadline.observability.metrics import SWEEPS
from threadline.retention.keeper import ThreadKeeper, TtlStrategy
from threadline.settings import Settings

log = logging.getLogger("threadline.retention")

SWEEP_LEASE_KEY = "threadline-sweep"
VERBS = {
    "delete": "deleted",
    "keep_latest": "cut to their latest checkpoint",
    "archive": "archived",
}


@dataclass
class SweepReport:
    """What a sweep did (or, dry, would do); counts only, never content."""

    strategy: str
    dry_run: bool
    expired: int = 0  # threads found expired
    handled: int = 0  # deleted, cut or archived
    messages: int = 0  # messages in the threads handled
    skipped: int = 0  # busy with a turn, or changed since they were found
    lease_taken: bool = False  # another sweeper was running: this one did nothing
    error: str | None = None  # why the sweep stopped early
    # The threads handled (found, on a dry run): for the caller, never logged.
    thread_keys: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        if self.lease_taken:
            return "another sweep is running; nothing done"
        verb = VERBS[self.strategy]
        head = (
            f"{self.expired} expired threads would be {verb}"
            if self.dry_run
            else f"{self.handled} of {self.expired} expired threads {verb} "
            f"({self.messages} messages); {self.skipped} skipped"
        )
        return head + (f"; stopped: {self.error}" if self.error else "")


@dataclass
class Sweeper:
    keeper: ThreadKeeper
    locks: TurnLocks
    strategy: TtlStrategy
    default_ttl: float | None
    batch_size: int = 1000

    @classmethod
    def configured(cls, keeper: ThreadKeeper, locks: TurnLocks, settings: Settings) -> Sweeper:
        """The sweeper `THREADLINE_TTL_STRATEGY`, `_THREAD_TTL` and `_SWEEP_LIMIT` describe."""
        return cls(
            keeper, locks, settings.ttl_strategy, settings.thread_ttl_seconds, settings.sweep_limit
        )

    async def sweep(
        self,
        *,
        now: float | None = None,
        dry_run: bool = False,
        max_batches: int | None = 1,
        on_thread: Callable[[ThreadRecord, bool], None] | None = None,
    ) -> SweepReport:
        """Handle up to `max_batches` batches of expired threads (None: until none is left)."""
        report = SweepReport(self.strategy, dry_run)
        now = self.keeper.clock() if now is None else now
        try:
            async with self.locks.hold([SWEEP_LEASE_KEY], 0):
                await self._sweep(report, now, dry_run, max_batches, on_thread)
        except ThreadBusyError:
            report.lease_taken = True
        except Exception as exc:  # a store or the archive failed: report it, retry next time
            report.error = f"{type(exc).__name__}: {exc}"
            log.warning("sweep stopped: %s", report.error)
        result = "lease_taken" if report.lease_taken else "error" if report.error else "ok"
        SWEEPS.labels(result=result).inc()
        return report

    async def _sweep(
        self,
        report: SweepReport,
        now: float,
        dry_run: bool,
        max_batches: int | None,
        on_thread: Callable[[ThreadRecord, bool], None] | None,
    ) -> None:
        records = self.keeper.records
        batches = 0
        while max_batches is None or batches < max_batches:
            batch = await records.alist_expired_records(now, self.default_ttl, self.batch_size)
            batches += 1
            report.expired += len(batch)
            if dry_run:
                report.thread_keys += [r.thread_key for r in batch]
                return
            progressed = False
            for found in batch:
                done = await self._one(found, now)
                progressed |= done
                report.handled += done
                report.skipped += not done
                report.messages += found.message_count if done else 0
                if done:
                    report.thread_keys.append(found.thread_key)
                if on_thread is not None:
                    on_thread(found, done)
            if len(batch) < self.batch_size or not progressed:
                return

    async def _one(self, found: ThreadRecord, now: float) -> bool:
        try:
            async with self.locks.hold([found.thread_key], 0):
                record = await self.keeper.records.aget_thread_record(found.thread_key)
                if record is None or not record.expired(now, self.default_ttl):
                    return False
                return await self.keeper.apply(self.strategy, record)
        except ThreadBusyError:
            return False
