"""The threads API: list a tenant's or a user's threads, read, rename, set retention, page
through, export, restore from the archive, delete.

Every route scopes the thread by the caller's tenant, and by the caller's user when the request
names one (`X-User-Id`), so another tenant's or user's thread is simply not there (404), the
same as a thread that never existed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import StateSnapshot
from pydantic import BaseModel, Field, ValidationError, field_validator

from threadline.checkpointers.records import ARCHIVED, LIVE, RecordQuery, ThreadRecord
from threadline.durations import DURATION_RULE, parse_duration
from threadline.observability.metrics import backend_of, timed_op
from threadline.retention import ArchiveError, NoArchiveError, NotArchivedError
from threadline.server.admission import Admission, hold_threads
from threadline.server.auth import Tenant
from threadline.server.erasure import ErasureReceipt, erase_threads, refuse_held
from threadline.server.export import MEDIA_TYPES, ExportFormat, export_lines
from threadline.server.limits import json_body
from threadline.server.ownership import RecordOut, check_owner, records_of
from threadline.server.serving import ServingSlot
from threadline.server.threads import (
    USER_HEADER,
    id_in_path,
    one_of,
    scoped_thread_key,
    validate_user_id,
)
from threadline.server.turns import TurnRunner

MAX_TITLE_CHARS = 200
MAX_METADATA_BYTES = 4096

router = APIRouter(prefix="/threads", tags=["threads"])

ThreadId = Annotated[str, id_in_path()]


def request_user(
    x_user_id: Annotated[
        str | None, Header(description="The end user; another user's thread is a 404.")
    ] = None,
) -> str | None:
    return validate_user_id(x_user_id) if x_user_id is not None else None


User = Annotated[str | None, Depends(request_user)]


class ThreadListOut(BaseModel):
    threads: list[RecordOut]
    next_cursor: str | None


class RecordPatch(BaseModel):
    """What a client may change in a thread's record (fields left out stay as they are)."""

    model_config = {"extra": "forbid"}

    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    metadata: dict[str, Any] | None = Field(
        default=None, description=f"A JSON object of at most {MAX_METADATA_BYTES} bytes."
    )
    ttl: str | None = Field(
        default=None,
        max_length=32,
        description=f"The thread's own idle TTL, {DURATION_RULE}; null: the deployment's.",
    )
    hold: bool | None = Field(
        default=None,
        description="Legal hold: while true the thread never expires or archives, and "
        "erasing it is refused.",
    )

    @field_validator("ttl")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def changes(self) -> dict[str, Any]:
        """The record fields this patch sets."""
        changes: dict[str, Any] = {}
        for name in ("title", "metadata", "hold"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if "ttl" in self.model_fields_set:
            changes["ttl_seconds"] = parse_duration(self.ttl) if self.ttl is not None else None
        return changes

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value


def _encode_cursor(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        updated_at, thread_key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(updated_at), str(thread_key)
    except (ValueError, TypeError, binascii.Error):
        raise HTTPException(422, "cursor must be a next_cursor this API returned") from None


class MessageOut(BaseModel):
    id: str | None
    type: str
    content: str | list[Any]
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ThreadOut(BaseModel):
    thread_id: str
    status: str  # `live`, or `archived`: no messages until restored
    record: RecordOut | None
    checkpoint_id: str | None
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


def _key(runner: TurnRunner, tenant: str | None, thread_id: str) -> str:
    return scoped_thread_key(tenant, thread_id, runner.naming)


def _config(runner: TurnRunner, tenant: str | None, thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": _key(runner, tenant, thread_id)}}


async def _owned_record(
    runner: TurnRunner, tenant: str | None, user: str | None, thread_id: str
) -> ThreadRecord | None:
    """The thread's record; 404 if the request names a user other than its owner."""
    record = await records_of(runner.graph.checkpointer).aget_thread_record(
        _key(runner, tenant, thread_id)
    )
    check_owner(record, user, thread_id)
    return record


def _archived_view(thread_id: str, record: ThreadRecord) -> ThreadOut:
    """An archived thread as `GET /threads/{id}` shows it: its record, no messages."""
    return ThreadOut(
        thread_id=thread_id,
        status=ARCHIVED,
        record=RecordOut.of(record),
        checkpoint_id=None,
        updated_at=RecordOut.of(record).updated_at,
        messages=[],
        summary="",
        summarized_count=0,
        total_folds=0,
        telemetry=None,
    )


def _archived(thread_id: str) -> HTTPException:
    return HTTPException(
        409, f"thread {thread_id!r} is archived: restore it first (POST .../restore)"
    )


async def _owned_thread(
    runner: TurnRunner, tenant: str | None, user: str | None, thread_id: str
) -> tuple[ThreadRecord | None, StateSnapshot]:
    """The thread's record and latest state; 404 if it has none or another owner, 409 if it
    is archived."""
    record = await _owned_record(runner, tenant, user, thread_id)
    if record is not None and record.status == ARCHIVED:
        raise _archived(thread_id)
    snapshot = await runner.graph.aget_state(_config(runner, tenant, thread_id))
    if snapshot.created_at is None:
        raise _not_found(thread_id)
    return record, snapshot


@router.get("", response_model=ThreadListOut)
async def list_threads(
    tenant: Tenant,
    user: User,
    request: Request,
    user_id: Annotated[
        str | None, Query(max_length=128, description="Only this user's threads.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Threads per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> ThreadListOut:
    """The tenant's threads (or one user's), most recently updated first."""
    named = one_of("user_id", user_id, user, USER_HEADER)
    owner = validate_user_id(named) if named is not None else None
    after = _decode_cursor(cursor) if cursor is not None else None
    runner = _runner(request)
    query = RecordQuery(runner.naming.tenant_tag(tenant), owner, limit + 1, after)
    records = await records_of(runner.graph.checkpointer).alist_thread_records(query)
    next_cursor = _encode_cursor(records[limit - 1].position) if len(records) > limit else None
    return ThreadListOut(
        threads=[RecordOut.of(r) for r in records[:limit]], next_cursor=next_cursor
    )


@router.patch(
    "/{thread_id}",
    response_model=RecordOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RecordPatch.model_json_schema()}},
        }
    },
)
async def patch_thread(
    thread_id: ThreadId, tenant: Tenant, user: User, request: Request
) -> RecordOut:
    """Rename the thread, set its metadata, its own TTL or a legal hold (the owner and times
    are not the client's)."""
    # Read like the turn routes: malformed JSON, NUL characters, huge numbers → 422.
    admission: Admission = request.app.state.admission
    try:
        patch = RecordPatch.model_validate(await json_body(request, admission.limits))
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        raise HTTPException(422, f"{where}: {problem['msg']}") from None
    runner = _runner(request)
    if await _owned_record(runner, tenant, user, thread_id) is None:
        raise _not_found(thread_id)
    changes = patch.changes()
    if (protector := runner.protector) is not None:  # titles and metadata are stored text too
        counts: Counter[str] = Counter()
        protected = protector.record(
            {"title": changes.get("title", ""), "metadata": changes.get("metadata", {})}, counts
        )
        if counts and protector.strategy == "block":
            raise HTTPException(
                422, "the record holds sensitive data: " + ", ".join(sorted(counts))
            )
        changes.update({name: protected[name] for name in ("title", "metadata") if name in changes})
    updated = await records_of(runner.graph.checkpointer).aupdate_thread_record(
        _key(runner, tenant, thread_id), changes
    )
    if updated is None:  # deleted meanwhile
        raise _not_found(thread_id)
    return RecordOut.of(updated)


@router.get("/{thread_id}", response_model=ThreadOut)
async def get_thread(
    thread_id: ThreadId, tenant: Tenant, user: User, request: Request
) -> ThreadOut:
    """The thread's record, transcript, running summary and last budget telemetry (an
    archived thread: its record, no messages)."""
    runner = _runner(request)
    record = await _owned_record(runner, tenant, user, thread_id)
    if record is not None and record.status == ARCHIVED:
        return _archived_view(thread_id, record)
    try:
        record, snapshot = await _owned_thread(runner, tenant, user, thread_id)
    except HTTPException as exc:
        # Archived between the two reads (a sweep ran meanwhile): answer as archived.
        now = await _owned_record(runner, tenant, user, thread_id)
        if exc.status_code in (404, 409) and now is not None and now.status == ARCHIVED:
            return _archived_view(thread_id, now)
        raise
    values = snapshot.values
    return ThreadOut(
        thread_id=thread_id,
        status=LIVE,
        record=RecordOut.of(record) if record else None,
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
    user: User,
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
    record = await _owned_record(runner, tenant, user, thread_id)
    if record is not None and record.status == ARCHIVED:
        raise _archived(thread_id)
    saver = _saver(runner)
    config = _config(runner, tenant, thread_id)
    cursor: RunnableConfig | None = (
        {"configurable": {"checkpoint_id": before}} if before is not None else None
    )
    with timed_op(backend_of(saver), "all", "list"):
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


@router.get(
    "/{thread_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
)
async def export_thread(
    thread_id: ThreadId,
    tenant: Tenant,
    user: User,
    request: Request,
    format: Annotated[ExportFormat, Query(description="`jsonl` or `markdown`.")] = "jsonl",
) -> StreamingResponse:
    """The whole thread to download: record, running summary and every message."""
    record, snapshot = await _owned_thread(_runner(request), tenant, user, thread_id)
    shown = RecordOut.of(record).model_dump() if record else {"thread_id": thread_id}
    extension = "jsonl" if format == "jsonl" else "md"
    return StreamingResponse(
        export_lines(format, shown, snapshot.values),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{thread_id}.{extension}"'},
    )


@router.post("/{thread_id}/restore", response_model=RecordOut)
async def restore_thread(
    thread_id: ThreadId, tenant: Tenant, user: User, request: Request
) -> RecordOut:
    """Bring an archived thread back whole from the archive; the next turn continues it and
    its idle time starts again. 409 if it is not archived."""
    runner = _runner(request)
    key = _key(runner, tenant, thread_id)
    admission: Admission = request.app.state.admission
    async with AsyncExitStack() as stack:
        await hold_threads(stack, admission, [key])
        if await _owned_record(runner, tenant, user, thread_id) is None:
            raise _not_found(thread_id)
        keeper = request.app.state.serving.current.keeper
        try:
            restored = await keeper.restore(key)
        except NotArchivedError:
            raise HTTPException(409, f"thread {thread_id!r} is not archived") from None
        except (NoArchiveError, ArchiveError) as exc:
            raise HTTPException(503, f"cannot restore: {exc}") from None
    return RecordOut.of(restored)


@router.delete("/{thread_id}", response_model=ErasureReceipt)
async def delete_thread(
    thread_id: ThreadId, tenant: Tenant, user: User, request: Request
) -> ErasureReceipt:
    """Erase the thread (record, receipts and archive included) from every tier; a turn in
    flight or a legal hold makes this a 409. The receipt's id is in the audit log."""
    runner = _runner(request)
    key = _key(runner, tenant, thread_id)

    async def exists_owned_and_not_held(key: str) -> None:  # under the thread's lock
        record = await _owned_record(runner, tenant, user, thread_id)
        if (
            record is None
            and await _saver(runner).aget_tuple(_config(runner, tenant, thread_id)) is None
        ):
            raise _not_found(thread_id)
        await refuse_held(keeper, key)

    keeper = request.app.state.serving.current.keeper
    return await erase_threads(
        keeper,
        request.app.state.admission,
        tenant=tenant,
        keys=[key],
        check=exists_owned_and_not_held,
    )
