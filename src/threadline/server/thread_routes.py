"""The threads API: read a thread, page through its checkpoints, delete it.

Every route scopes the thread by the caller's tenant, so another tenant's thread is simply not
there (404), the same as a thread that never existed.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from pydantic import BaseModel

from threadline.server.admission import Admission, hold_threads
from threadline.server.auth import require_tenant
from threadline.server.serving import ServingSlot
from threadline.server.threads import THREAD_ID_PATTERN, scoped_thread_key
from threadline.server.turns import TurnRunner

router = APIRouter(prefix="/threads", tags=["threads"])

ThreadId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=THREAD_ID_PATTERN.pattern,
        description="1-128 characters of letters, digits and . _ : @ -",
    ),
]
Tenant = Annotated[str | None, Depends(require_tenant)]


class MessageOut(BaseModel):
    id: str | None
    type: str
    content: str | list[Any]
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ThreadOut(BaseModel):
    thread_id: str
    checkpoint_id: str
    updated_at: str | None
    messages: list[MessageOut]
    summary: str
    summarized_count: int
    total_folds: int
    telemetry: dict[str, Any] | None


class CheckpointOut(BaseModel):
    checkpoint_id: str
    parent_checkpoint_id: str | None
    created_at: str | None
    step: int | None
    source: str | None
    message_count: int | None


class HistoryOut(BaseModel):
    thread_id: str
    checkpoints: list[CheckpointOut]
    next_before: str | None


def _runner(request: Request) -> TurnRunner:
    slot: ServingSlot = request.app.state.serving
    return slot.current.runner


def _saver(runner: TurnRunner) -> BaseCheckpointSaver:
    saver = runner.graph.checkpointer
    assert isinstance(saver, BaseCheckpointSaver)
    return saver


def _message_out(message: BaseMessage) -> MessageOut:
    return MessageOut(
        id=message.id,
        type=message.type,
        content=message.content,
        name=message.name,
        tool_calls=list(getattr(message, "tool_calls", None) or []) or None,
        tool_call_id=getattr(message, "tool_call_id", None),
    )


def _not_found(thread_id: str) -> HTTPException:
    return HTTPException(404, f"no thread {thread_id!r}")


def _config(tenant: str | None, thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": scoped_thread_key(tenant, thread_id)}}


@router.get("/{thread_id}", response_model=ThreadOut)
async def get_thread(thread_id: ThreadId, tenant: Tenant, request: Request) -> ThreadOut:
    """The thread's transcript, running summary and last budget telemetry."""
    runner = _runner(request)
    snapshot = await runner.graph.aget_state(_config(tenant, thread_id))
    if snapshot.created_at is None:
        raise _not_found(thread_id)
    values = snapshot.values
    return ThreadOut(
        thread_id=thread_id,
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        updated_at=snapshot.created_at,
        messages=[_message_out(m) for m in values.get("messages", [])],
        summary=values.get("summary", ""),
        summarized_count=values.get("summarized_count", 0),
        total_folds=values.get("total_folds", 0),
        telemetry=values.get("telemetry"),
    )


@router.get("/{thread_id}/history", response_model=HistoryOut)
async def get_history(
    thread_id: ThreadId,
    tenant: Tenant,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100, description="Checkpoints per page.")] = 20,
    before: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=r"^[A-Za-z0-9-]+$",
            description="`next_before` of the previous page.",
        ),
    ] = None,
) -> HistoryOut:
    """The thread's checkpoints, newest first, `limit` at a time (one checkpoint per turn)."""
    runner = _runner(request)
    saver = _saver(runner)
    config = _config(tenant, thread_id)
    cursor: RunnableConfig | None = (
        {"configurable": {"checkpoint_id": before}} if before is not None else None
    )
    page = [t async for t in saver.alist(config, before=cursor, limit=limit + 1)]
    if not page and before is None:
        raise _not_found(thread_id)
    # The transcript is stored as deltas: count it through the graph, oldest first, so each
    # read extends the one before instead of replaying the thread again.
    message_counts: dict[str, int] = {}
    for t in reversed(page[:limit]):
        state = await runner.graph.aget_state(t.config)
        message_counts[t.checkpoint["id"]] = len(state.values.get("messages", []))
    checkpoints = [
        CheckpointOut(
            checkpoint_id=t.checkpoint["id"],
            parent_checkpoint_id=(t.parent_config or {})
            .get("configurable", {})
            .get("checkpoint_id"),
            created_at=t.checkpoint.get("ts"),
            step=t.metadata.get("step"),
            source=t.metadata.get("source"),
            message_count=message_counts.get(t.checkpoint["id"]),
        )
        for t in page[:limit]
        if message_counts[t.checkpoint["id"]]  # not the empty anchor before the first turn
    ]
    next_before = page[limit - 1].checkpoint["id"] if len(page) > limit else None
    return HistoryOut(thread_id=thread_id, checkpoints=checkpoints, next_before=next_before)


@router.delete("/{thread_id}", status_code=204, response_class=Response)
async def delete_thread(thread_id: ThreadId, tenant: Tenant, request: Request) -> Response:
    """Delete the thread from every tier; a turn in flight on it makes this a 409."""
    saver = _saver(_runner(request))
    admission: Admission = request.app.state.admission
    key = scoped_thread_key(tenant, thread_id)
    async with AsyncExitStack() as stack:
        await hold_threads(stack, admission, [key])
        if await saver.aget_tuple({"configurable": {"thread_id": key}}) is None:
            raise _not_found(thread_id)
        await saver.adelete_thread(key)
    return Response(status_code=204)
