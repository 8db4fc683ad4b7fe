"""Where a stored value belongs: the associated data its encryption is bound to.

LangGraph's `EncryptedSerializer` authenticates a value but not its position, so a row copied
onto another thread, checkpoint or channel decrypts there (langgraph#9004). With a key set,
threadline binds each value to its place — the storage key of its thread (tenant-scoped,
hashed) and the columns that locate its row — as AEAD associated data. Every tier names a
place the same way, so a value serialised once serves Postgres and Redis alike.
"""

from __future__ import annotations

import json

Place = bytes


def _place(kind: str, *parts: str | int) -> Place:
    return json.dumps([kind, *parts], separators=(",", ":")).encode()


def blob_place(thread_id: str, checkpoint_ns: str, channel: str, version: str) -> Place:
    """A channel value, stored once per version (checkpoints share it)."""
    return _place("blob", thread_id, checkpoint_ns, channel, str(version))


def write_place(
    thread_id: str, checkpoint_ns: str, checkpoint_id: str, task_id: str, idx: int, channel: str
) -> Place:
    """A pending write of a task at a checkpoint."""
    return _place("write", thread_id, checkpoint_ns, checkpoint_id, task_id, int(idx), channel)


def checkpoint_place(kind: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> Place:
    """A part of one checkpoint: `values` (its sealed inline values), `metadata`, `head`
    (the hot tier's copy of its skeleton)."""
    return _place(kind, thread_id, checkpoint_ns, checkpoint_id)


def history_place(thread_id: str, checkpoint_ns: str, channel: str, seq: int) -> Place:
    """The `seq`th write of a delta channel's history, or its seed (`seq` -1), as the hot tier
    keeps a history decoded from Postgres (the entry keeps it while it advances, so it names
    no checkpoint)."""
    return _place("history", thread_id, checkpoint_ns, channel, int(seq))


def record_place(thread_key: str, column: str) -> Place:
    """A sealed column of a thread record."""
    return _place("record", thread_key, column)


def archive_place(thread_key: str) -> Place:
    """A thread's archive object."""
    return _place("archive", thread_key)
