"""Forgetting on request: a thread, or every thread of a user, gone from every store.

Each thread is deleted under its turn lock (a turn in flight makes the erasure a 409, to
retry), through the saver's `adelete_thread`, which removes its checkpoints, receipts and
record from every tier and drops what this process holds of it in memory, and from the
archive. A thread on legal hold is kept: erasing it alone is a 409; erasing its user leaves it
and says so in the receipt. The audit log keeps one line per erasure, without content.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from fastapi import HTTPException
from pydantic import BaseModel, Field

from threadline.checkpointers.records import ARCHIVED, RecordQuery, ThreadRecord
from threadline.observability.metrics import RETENTION
from threadline.privacy.names import ThreadNaming
from threadline.retention import NoArchiveError, ThreadKeeper
from threadline.retention.archive import object_name
from threadline.server.admission import Admission, hold_threads
from threadline.server.ownership import records_of

PAGE = 100


class ErasureReceipt(BaseModel):
    erased_threads: int
    receipt_id: str
    held_threads: list[str] = Field(
        default_factory=list, description="Threads kept because they are on legal hold."
    )


async def erase_thread(keeper: ThreadKeeper, thread_key: str) -> None:
    """Delete the thread from every tier and the archive (the caller holds its lock).

    An archived thread whose archive is not configured any more is refused (NoArchiveError):
    deleting its record would leave its object behind, unfindable."""
    saver = keeper.graph.checkpointer
    assert saver is not None and not isinstance(saver, bool)
    if keeper.archive is None:
        record = await keeper.records.aget_thread_record(thread_key)
        if record is not None and record.status == ARCHIVED:
            raise NoArchiveError(
                "the thread is archived but THREADLINE_ARCHIVE_URL is not set: "
                "set it to erase the archived copy too"
            )
    await saver.adelete_thread(thread_key)
    if keeper.archive is not None:
        await keeper.archive.delete(object_name(thread_key))


async def erase_threads(
    keeper: ThreadKeeper,
    admission: Admission,
    *,
    tenant: str | None,
    keys: list[str],
    user_id: str | None = None,
    check: Callable[[str], Awaitable[None]] | None = None,
    held: list[str] | None = None,
) -> ErasureReceipt:
    """Delete `keys`, each under its turn lock (`check(key)`, if given, runs under the lock
    first and may refuse), and record the erasure; `held` names threads kept on legal hold."""
    for key in keys:
        async with AsyncExitStack() as stack:
            await hold_threads(stack, admission, [key])
            if check is not None:
                await check(key)
            try:
                await erase_thread(keeper, key)
            except NoArchiveError as exc:
                raise HTTPException(503, str(exc)) from None
    RETENTION.labels(action="erase").inc(len(keys))
    receipt = ErasureReceipt(
        erased_threads=len(keys), receipt_id=uuid.uuid4().hex, held_threads=held or []
    )
    keeper.audit.record(
        "erase",
        tenant=tenant,
        user_id=user_id,
        thread_keys=keys,
        receipt=receipt.receipt_id,
        counts={"held": len(held or [])},
    )
    return receipt


async def refuse_held(keeper: ThreadKeeper, thread_key: str) -> None:
    """409 if the thread is on legal hold (read under its lock)."""
    record = await records_of(keeper.graph.checkpointer).aget_thread_record(thread_key)
    if record is not None and record.hold:
        raise HTTPException(409, f"thread {record.thread_id!r} is on legal hold; lift it first")


async def user_threads(
    keeper: ThreadKeeper, tenant: str | None, user_id: str, naming: ThreadNaming
) -> list[ThreadRecord]:
    """Every thread the user owns in the tenant."""
    records = records_of(keeper.graph.checkpointer)
    found: list[ThreadRecord] = []
    tag = naming.tenant_tag(tenant)
    query = RecordQuery(tag, user_id, PAGE)
    while page := await records.alist_thread_records(query):
        found += page
        if len(page) < PAGE:
            break
        query = RecordQuery(tag, user_id, PAGE, page[-1].position)
    return found
