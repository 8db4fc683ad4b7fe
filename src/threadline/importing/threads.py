"""Writing imported sessions as threads, the way a served turn is stored.

Each session is one write under the thread's turn lock: its missing messages (by id) go through
the graph on a `StagedSaver` (`aupdate_state` as the turn's last node, so the next turn starts
from its input), and the commit carries the thread's record, protects sensitive values and
seals the record exactly as a turn's commit does. A session is thus imported whole or not at
all: an interrupted run leaves every thread either as it was or complete, and the next run
adds only what is missing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.graph.state import CompiledStateGraph

from threadline.checkpointers.records import ARCHIVED, ThreadRecord, record_metadata
from threadline.importing.sessions import SourceSession
from threadline.locks import ThreadBusyError, TurnLocks
from threadline.privacy import Protector
from threadline.privacy.names import CLEAR, ThreadNaming
from threadline.retention.keeper import LAST_NODE
from threadline.server.ownership import records_of, title_of
from threadline.server.staged import StagedSaver
from threadline.server.threads import THREAD_ID_PATTERN, scoped_thread_key

FAILED_SHOWN = 20  # failed sessions listed by id in the summary (the rest are counted)


@dataclass
class ImportReport:
    """What a run did, in counts (never message text)."""

    dry_run: bool = False
    sessions: int = 0
    created: int = 0  # new threads
    extended: int = 0  # threads that got the messages they lacked
    unchanged: int = 0  # threads that held every message already (skipped)
    messages: int = 0  # messages written (or, dry, to write)
    present: int = 0  # messages the threads held already (skipped)
    failed: dict[str, str] = field(default_factory=dict)  # session id → reason

    def summary(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        lines = [
            f"sessions: {self.sessions} read, {self.created} new threads, "
            f"{self.extended} extended, {self.unchanged} already complete (skipped), "
            f"{len(self.failed)} failed",
            f"messages: {verb} {self.messages}, {self.present} already present (skipped)",
        ]
        if self.dry_run:
            lines.append("dry run: nothing was written")
        for reason, count in Counter(self.failed.values()).most_common():
            lines.append(f"failed ({count}): {reason}")
        shown = list(self.failed)[:FAILED_SHOWN]
        if shown:
            more = len(self.failed) - len(shown)
            lines.append(
                "failed sessions: " + ", ".join(shown) + (f" and {more} more" if more else "")
            )
        return "\n".join(lines)


class SessionFailed(Exception):
    """This session cannot become a thread (the run goes on with the next)."""


class ThreadImporter:
    """Writes sessions as threads of the graph's saver (compiled with the deployment's saver)."""

    def __init__(
        self,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        locks: TurnLocks,
        *,
        tenant: str | None = None,
        naming: ThreadNaming = CLEAR,
        protector: Protector | None = None,
        user_from: str | None = None,
        dry_run: bool = False,
        lock_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self.locks = locks
        self.tenant = tenant
        self.naming = naming
        self.protector = protector
        self.user_from = user_from
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.report = ImportReport(dry_run=dry_run)

    async def add(self, session: SourceSession) -> None:
        """Import one session (or count it, dry); a failure is recorded with its reason."""
        self.report.sessions += 1
        try:
            await self._add(session)
        except SessionFailed as exc:
            self.report.failed[session.session_id] = str(exc)
        except ThreadBusyError:
            self.report.failed[session.session_id] = "the thread was busy with a turn"
        except Exception as exc:  # a store error on one thread: say which kind, go on
            self.report.failed[session.session_id] = f"could not be written ({type(exc).__name__})"

    def _owner(self, session: SourceSession) -> str | None:
        if self.user_from is None:
            return None
        value = session.value_of(self.user_from)
        if value is None:
            return None
        user = str(value)
        if not THREAD_ID_PATTERN.fullmatch(user):
            raise SessionFailed(f"{self.user_from} is not a valid user id")
        return user

    async def _add(self, session: SourceSession) -> None:
        if session.problem:
            raise SessionFailed(session.problem)
        if not THREAD_ID_PATTERN.fullmatch(session.session_id):
            raise SessionFailed(
                "session id is not a valid thread_id (1-128 of letters, digits, . _ : @ -)"
            )
        user = self._owner(session)
        key = scoped_thread_key(self.tenant, session.session_id, self.naming)
        config: Any = {"configurable": {"thread_id": key}}
        async with self.locks.hold([key], self.lock_timeout):
            record = await records_of(self.graph.checkpointer).aget_thread_record(key)
            if record is not None and record.status == ARCHIVED:
                raise SessionFailed("the thread is archived: restore it first")
            if record is not None and None not in (user, record.user_id) and record.user_id != user:
                raise SessionFailed("the thread belongs to another user")
            held: list[BaseMessage] = list(
                (await self.graph.aget_state(config)).values.get("messages") or []
            )
            have = {m.id for m in held}
            new = [m for m in session.messages if m.id not in have]
            self.report.present += len(session.messages) - len(new)
            if not new:
                self.report.unchanged += 1
                return
            blocking = self.protector is not None and self.protector.strategy == "block"
            if blocking and (found := self.protector.findings(new)):  # type: ignore[union-attr]
                raise SessionFailed("holds sensitive data: " + ", ".join(sorted(found)))
            if not self.report.dry_run:
                await self._write(session, key, config, record, user, held, new)
            self.report.messages += len(new)
            if held:
                self.report.extended += 1
            else:
                self.report.created += 1

    async def _write(
        self,
        session: SourceSession,
        key: str,
        config: Any,
        record: ThreadRecord | None,
        user: str | None,
        held: list[BaseMessage],
        new: list[BaseMessage],
    ) -> None:
        """The missing messages and the record, in one commit (protected and sealed there)."""
        saver = self.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        staged = StagedSaver(saver, protector=self.protector)
        await self.graph.copy({"checkpointer": staged}).aupdate_state(
            config, {"messages": new}, as_node=LAST_NODE
        )
        now = self.clock()
        messages = [*held, *new]
        updated = max(session.updated_at or now, record.updated_at if record else 0.0)
        fresh = ThreadRecord(
            thread_key=key,
            tenant=self.naming.tenant_tag(self.tenant),
            thread_id=session.session_id,
            user_id=record.user_id if record is not None else user,
            title=title_of(messages),
            created_at=min(session.created_at or now, updated),
            updated_at=updated,
            message_count=len(messages),
        )
        await staged.commit(record_metadata(fresh))
