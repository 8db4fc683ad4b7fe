"""The sweep: find expired threads in bounded batches and apply the deployment's strategy.

One sweeper at a time: a sweep holds a lease (the turn lock of a reserved key: an advisory
lock on Postgres, a renewed lease on Redis), and another replica's sweep that finds it taken
does nothing. Each thread is handled under its own turn lock, taken without waiting (a thread
busy with a turn is not idle after all), after reading its record again.

One thread that fails (an unreadable checkpoint, an archive object that cannot be written) is
counted and logged without content, and the sweep moves on: retention's steps are ordered so
that stopping between any two loses nothing (see `keeper`), so an exception part-way leaves
the thread as a crash there would. A failed thread is not fetched again in the same run, and
this sweeper retries it in later runs only after every other expired thread, so a thread that
always fails cannot hold up the rest. An unreachable store ends the sweep at once, and so do
`give_up_after` failures in a row (something is wrong with more than one thread).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from threadline.checkpointers.records import ThreadRecord
from threadline.locks import ThreadBusyError, TurnLocks
from threadline.observability.metrics import SWEEPS
from threadline.retention.keeper import ThreadKeeper, TtlStrategy
from threadline.settings import Settings
from threadline.store_errors import STORE_ERRORS  # a store that cannot be reached: stop

log = logging.getLogger("threadline.retention")

SWEEP_LEASE_KEY = "threadline-sweep"
VERBS = {
    "delete": "deleted",
    "keep_latest": "cut to their latest checkpoint",
    "archive": "archived",
}
# How many failed threads a sweeper remembers, to retry after the others (bounded memory).
REMEMBERED_FAILURES = 10_000


@dataclass
class SweepReport:
    """What a sweep did (or, dry, would do); counts only, never content."""

    strategy: str
    dry_run: bool
    expired: int = 0  # threads found expired
    handled: int = 0  # deleted, cut or archived
    messages: int = 0  # messages in the threads handled
    skipped: int = 0  # busy with a turn, or changed since they were found
    failed: int = 0  # raised an error: left as they were, retried by a later sweep
    failures: Counter[str] = field(default_factory=Counter)  # failed threads by error type
    lease_taken: bool = False  # another sweeper was running: this one did nothing
    error: str | None = None  # why the sweep stopped early
    # The threads handled (found, on a dry run): for the caller, never logged.
    thread_keys: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        if self.lease_taken:
            return "another sweep is running; nothing done"
        verb = VERBS[self.strategy]
        if self.dry_run:
            head = f"{self.expired} expired threads would be {verb}"
        else:
            kinds = ", ".join(f"{name} x{n}" for name, n in self.failures.most_common())
            head = (
                f"{self.handled} of {self.expired} expired threads {verb} "
                f"({self.messages} messages); {self.skipped} skipped; {self.failed} failed"
                + (f" ({kinds})" if kinds else "")
            )
        return head + (f"; stopped: {self.error}" if self.error else "")


@dataclass
class Sweeper:
    keeper: ThreadKeeper
    locks: TurnLocks
    strategy: TtlStrategy
    default_ttl: float | None
    batch_size: int = 1000
    give_up_after: int = 50  # failed threads in a row that end the sweep
    # Threads that failed in a run of this sweeper, by the `updated_at` they failed at: later
    # runs try them after every other expired thread.
    _failing: dict[str, float] = field(default_factory=dict, init=False, repr=False)

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
        """Handle up to `max_batches` batches of expired threads (None: until none is left);
        dry, count them (`max_batches` of None: all of them)."""
        report = SweepReport(self.strategy, dry_run)
        now = self.keeper.clock() if now is None else now
        try:
            async with self.locks.hold([SWEEP_LEASE_KEY], 0):
                if dry_run:
                    await self._count(report, now, max_batches, on_thread)
                else:
                    await self._sweep(report, now, max_batches, on_thread)
        except ThreadBusyError:
            report.lease_taken = True
        except Exception as exc:  # a store failed: report it, retry next time
            report.error = f"{type(exc).__name__}: {exc}"
            log.warning("sweep stopped: %s", report.error)
        result = "lease_taken" if report.lease_taken else "ok"
        if report.error or report.failed:
            result = "error"
        SWEEPS.labels(result=result).inc()
        return report

    async def _count(
        self,
        report: SweepReport,
        now: float,
        max_batches: int | None,
        on_thread: Callable[[ThreadRecord, bool], None] | None,
    ) -> None:
        """Every expired thread (up to `max_batches` batches' worth). The store lists the
        oldest first with no cursor, so the listing is asked again, twice as long each time,
        until it comes back short: a few queries, however many threads have expired."""
        records = self.keeper.records
        limit = self.batch_size * (max_batches or 1)
        found = await records.alist_expired_records(now, self.default_ttl, limit)
        while max_batches is None and len(found) >= limit:
            limit *= 2
            found = await records.alist_expired_records(now, self.default_ttl, limit)
        report.expired = len(found)
        report.thread_keys = [r.thread_key for r in found]
        if on_thread is not None:
            for record in found:
                on_thread(record, False)

    async def _sweep(
        self,
        report: SweepReport,
        now: float,
        max_batches: int | None,
        on_thread: Callable[[ThreadRecord, bool], None] | None,
    ) -> None:
        records = self.keeper.records
        passed: set[str] = set()  # tried this run and not handled: not fetched again
        retrying = False  # threads that failed in earlier runs: tried once the rest are done
        batches = in_a_row = 0
        while max_batches is None or batches < max_batches:
            deferred = {} if retrying else dict(self._failing)
            # Over-fetch by what is left out, so a batch is full while there is enough.
            limit = self.batch_size + len(passed) + len(deferred)
            found = await records.alist_expired_records(now, self.default_ttl, limit)
            batch = [
                r
                for r in found
                if r.thread_key not in passed and deferred.get(r.thread_key) != r.updated_at
            ][: self.batch_size]
            if not batch:  # nothing left (the listing came back short)
                if retrying or not any(r.thread_key in deferred for r in found):
                    self._forget_failures_not_in(found)
                    return
                retrying = True
                continue
            batches += 1
            report.expired += len(batch)
            for record in batch:
                try:
                    done = await self._one(record, now)
                except STORE_ERRORS:
                    raise
                except Exception as exc:
                    self._failed(report, record, exc)
                    passed.add(record.thread_key)
                    in_a_row += 1
                    if in_a_row >= self.give_up_after:
                        report.error = f"{in_a_row} threads in a row failed"
                        return
                    done = None
                else:
                    in_a_row = 0
                    self._failing.pop(record.thread_key, None)
                    if done:
                        report.handled += 1
                        report.messages += record.message_count
                        report.thread_keys.append(record.thread_key)
                    else:
                        report.skipped += 1
                        passed.add(record.thread_key)
                if on_thread is not None:
                    on_thread(record, bool(done))

    def _failed(self, report: SweepReport, record: ThreadRecord, exc: Exception) -> None:
        """Count and log a thread's failure: the error's type and the thread's hashed key
        (as the audit log writes it), never the error's text, which may quote content."""
        kind = type(exc).__name__
        report.failed += 1
        report.failures[kind] += 1
        log.warning(
            "sweep: thread %s failed (%s); left as it was, moving on",
            self.keeper.audit.hashed(record.thread_key),
            kind,
        )
        self._failing.pop(record.thread_key, None)
        self._failing[record.thread_key] = record.updated_at
        while len(self._failing) > REMEMBERED_FAILURES:
            del self._failing[next(iter(self._failing))]

    def _forget_failures_not_in(self, found: list[ThreadRecord]) -> None:
        """Threads that failed before and are no longer expired (a turn, an erasure) are not
        deferred any more."""
        still = {r.thread_key for r in found}
        for key in [k for k in self._failing if k not in still]:
            del self._failing[key]

    async def _one(self, found: ThreadRecord, now: float) -> bool:
        try:
            async with self.locks.hold([found.thread_key], 0):
                record = await self.keeper.records.aget_thread_record(found.thread_key)
                if record is None or not record.expired(now, self.default_ttl):
                    return False
                return await self.keeper.apply(self.strategy, record)
        except ThreadBusyError:
            return False
