"""Forgetting on request: a thread, or every thread of a user, gone from every store.

Each thread is deleted under its turn lock (a turn in flight makes the erasure a 409, to
retry), through the saver's `adelete_thread`, which removes its checkpoints, receipts and
record from every tier and drops what this process holds of it in memory. The caller gets a
receipt; the audit log (`audit.py`) keeps one line per erasure, without content.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from langgraph.checkpoint.base import BaseCheckpointSaver
from pydantic import BaseModel

from threadline.checkpointers.records import RecordQuery
from threadline.server.admission import Admission, hold_threads
from threadline.server.audit import AuditLog
from threadline.server.ownership import records_of

PAGE = 100


class ErasureReceipt(BaseModel):
    erased_threads: int
    receipt_id: str


async def erase_threads(
    saver: BaseCheckpointSaver,
    admission: Admission,
    audit: AuditLog,
    *,
    tenant: str | None,
    keys: list[str],
    user_id: str | None = None,
    check: Callable[[], Awaitable[None]] | None = None,
) -> ErasureReceipt:
    """Delete `keys`, each under its turn lock (`check`, if given, runs under the lock first
    and may refuse), and record the erasure."""
    for key in keys:
        async with AsyncExitStack() as stack:
            await hold_threads(stack, admission, [key])
            if check is not None:
                await check()
            await saver.adelete_thread(key)
    receipt = ErasureReceipt(erased_threads=len(keys), receipt_id=uuid.uuid4().hex)
    audit.record(
        "erase", tenant=tenant, user_id=user_id, thread_keys=keys, receipt=receipt.receipt_id
    )
    return receipt


async def user_thread_keys(
    saver: BaseCheckpointSaver, tenant: str | None, user_id: str
) -> list[str]:
    """Every thread the user owns in the tenant."""
    records = records_of(saver)
    keys: list[str] = []
    query = RecordQuery(tenant or "", user_id, PAGE)
    while page := await records.alist_thread_records(query):
        keys += [r.thread_key for r in page]
        if len(page) < PAGE:
            break
        query = RecordQuery(tenant or "", user_id, PAGE, page[-1].position)
    return keys
