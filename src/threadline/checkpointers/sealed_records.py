"""Thread records with their text sealed: with encryption on, a record's title (a user's first
message), readable thread id and metadata are stored encrypted like checkpoint values, each
bound to its record and field (a sealed title copied onto another record does not open).

A thread record lives in a plain table (or Redis hash) so it can be listed and filtered; only
the columns listings use (tenant, owner, times, retention) stay readable. Sealing happens where
a record enters storage (a turn's commit, a PATCH) and opening where it leaves (`SealedRecords`,
which every reader goes through), so each saver stores whatever string it is given. Records
written in clear before encryption was turned on still read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol

from threadline.checkpointers.places import record_place
from threadline.checkpointers.records import KeepsThreadRecords, RecordQuery, ThreadRecord
from threadline.checkpointers.serde import SEALED, ValueSealer, is_encrypting

SEALED_TEXT_PREFIX = "$enc:"
SEALED_TEXT_FIELDS = ("thread_id", "title")


class RecordSealer:
    """Seals and opens a record's text fields; the identity without encryption."""

    def __init__(self, serde: SerializerProtocol) -> None:
        self.encrypted = is_encrypting(serde)
        self._sealer = ValueSealer(serde)

    def seal_fields(self, fields: Mapping[str, Any], thread_key: str) -> dict[str, Any]:
        """`fields` (a record as a dict, or a record's changes) with its text sealed, each
        field bound to its place in the record of `thread_key` (see `places`)."""
        sealed = dict(fields)
        if not self.encrypted:
            return sealed
        for name in SEALED_TEXT_FIELDS:
            if isinstance(value := sealed.get(name), str) and not _is_sealed_text(value):
                type_tag, blob = self._sealer.seal(value, record_place(thread_key, name))
                sealed[name] = f"{SEALED_TEXT_PREFIX}{type_tag}:{blob}"
        if isinstance(metadata := sealed.get("metadata"), Mapping) and SEALED not in metadata:
            place = record_place(thread_key, "metadata")
            sealed["metadata"] = (
                {SEALED: self._sealer.seal(dict(metadata), place)} if metadata else {}
            )
        return sealed

    def seal(self, record: ThreadRecord) -> ThreadRecord:
        return ThreadRecord(**self.seal_fields(dataclasses.asdict(record), record.thread_key))

    def open(self, record: ThreadRecord) -> ThreadRecord:
        changes: dict[str, Any] = {}
        for name in SEALED_TEXT_FIELDS:
            if _is_sealed_text(value := getattr(record, name)):
                type_tag, _, blob = value[len(SEALED_TEXT_PREFIX) :].partition(":")
                place = record_place(record.thread_key, name)
                changes[name] = self._sealer.unseal([type_tag, blob], place)
        if SEALED in record.metadata:
            place = record_place(record.thread_key, "metadata")
            changes["metadata"] = dict(self._sealer.unseal(record.metadata[SEALED], place))
        return dataclasses.replace(record, **changes) if changes else record


def _is_sealed_text(value: str) -> bool:
    return value.startswith(SEALED_TEXT_PREFIX)


class SealedRecords:
    """A saver's thread records as their readers see them: opened on the way out, changes
    sealed on the way in."""

    def __init__(self, records: KeepsThreadRecords, sealer: RecordSealer) -> None:
        self._records = records
        self._sealer = sealer

    @classmethod
    def of(cls, saver: Any) -> SealedRecords:
        sealer = RecordSealer(saver.serde)
        assert isinstance(saver, KeepsThreadRecords), "threadline's savers keep thread records"
        return cls(saver, sealer)

    def _opened(self, record: ThreadRecord | None) -> ThreadRecord | None:
        return self._sealer.open(record) if record is not None else None

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        return self._opened(await self._records.aget_thread_record(thread_key))

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        return [self._sealer.open(r) for r in await self._records.alist_thread_records(query)]

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        if self._sealer.encrypted and set(expect or ()) & {"metadata", *SEALED_TEXT_FIELDS}:
            raise ValueError("sealed record fields cannot be compared in place")
        updated = await self._records.aupdate_thread_record(
            thread_key, self._sealer.seal_fields(changes, thread_key), expect=expect
        )
        return self._opened(updated)

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        found = await self._records.alist_expired_records(now, default_ttl, limit)
        return [self._sealer.open(r) for r in found]

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        await self._records.adelete_checkpoints(thread_key, keep=keep)

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return self._opened(self._records.take_written_record(thread_key))


__all__ = ["RecordSealer", "SealedRecords"]
