"""What every history reader yields: sessions of LangChain messages, each with a stable id.

Readers differ in layout only; they all hand over `SourceSession`s in the source's order, every
message with an id (its own, else one derived from where it sits in the source, so a second run
names the same message the same way and the importer can tell what a thread already holds).
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_core.messages import BaseMessage, messages_from_dict

# Namespace of the ids given to messages a source stores without one.
IMPORTED_IDS = uuid.UUID("2b0c7d1e-5f3a-4e8b-9c61-7a1d3e5f9b20")
# What a thread may hold (the server's input rule); other kinds make the session fail.
IMPORTABLE_TYPES = frozenset({"human", "ai", "system", "tool"})


class SourceError(Exception):
    """The source cannot be read as asked (a missing table, a bad option): exit code 2."""


class SourceMissingError(SourceError):
    """The table, collection or keys named do not exist."""


class SourceUnreachableError(Exception):
    """The store did not answer (down, wrong host, refused credentials): exit code 1."""


@dataclass(frozen=True)
class SourceSpec:
    """How the command names a source's location, and its default."""

    option: str  # "table", "collection" or "key_prefix"
    default: str | None
    required: bool = False


SOURCES: dict[str, SourceSpec] = {
    # PostgresChatMessageHistory has no default table; its documentation's is `chat_history`.
    "postgres-history": SourceSpec("table", "chat_history"),
    # None: both libraries' default prefixes (`chat:` and `message_store:`).
    "redis-history": SourceSpec("key_prefix", None),
    "sql-history": SourceSpec("table", "message_store"),
    "dynamodb-history": SourceSpec("table", None, required=True),
    "firestore-history": SourceSpec("collection", "ChatHistory"),
}


@dataclass
class SourceSession:
    """One stored conversation, in order; `fields` are the source's other values for it
    (columns, attributes, document fields) that `--user-from` may name."""

    session_id: str
    messages: list[BaseMessage]
    created_at: float | None = None  # Unix seconds, when the source keeps times
    updated_at: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why it cannot be imported (an unreadable message, say)

    def value_of(self, name: str) -> Any:
        """`name` among the session's fields, else the first message's metadata holding it."""
        if self.fields.get(name) not in (None, ""):
            return self.fields[name]
        for message in self.messages:
            for place in (message.additional_kwargs, message.response_metadata):
                if place.get(name) not in (None, ""):
                    return place[name]
        return None


class HistoryReader(Protocol):
    async def count_sessions(self) -> int: ...

    def sessions(self) -> AsyncIterator[SourceSession]: ...


def stable_id(source: str, where: str, session_id: str, position: object) -> str:
    """The id of a message its source stored without one: the same on every run."""
    return str(uuid.uuid5(IMPORTED_IDS, f"{source}\0{where}\0{session_id}\0{position}"))


def decoded_session(
    source: str,
    where: str,
    session_id: str,
    rows: Sequence[tuple[object, Mapping[str, Any] | str | bytes]],
    **extra: Any,
) -> SourceSession:
    """A session from `(position, message dict or its JSON)` rows in order: LangChain's own
    `messages_from_dict`, each message given its stable id if it has none (or repeats one)."""
    messages: list[BaseMessage] = []
    seen: set[str] = set()
    for number, (position, raw) in enumerate(rows):
        try:
            data = json.loads(raw) if isinstance(raw, str | bytes) else raw
            (message,) = messages_from_dict([data])  # type: ignore[list-item]
        except Exception as exc:  # any malformed entry: the session fails, the run goes on
            return SourceSession(
                session_id, [], problem=f"message {number + 1} unreadable ({type(exc).__name__})"
            )
        if message.type not in IMPORTABLE_TYPES:
            return SourceSession(
                session_id, [], problem=f"message {number + 1} is a {message.type!r} message"
            )
        if not message.id or message.id in seen:
            message.id = stable_id(source, where, session_id, position)
        seen.add(message.id)
        messages.append(message)
    return SourceSession(session_id, messages, **extra)


@asynccontextmanager
async def open_reader(source: str, url: str, location: str | None) -> AsyncIterator[Any]:
    """The reader of `source` at `url`, checked (reachable, the table or keys there)."""
    if source not in SOURCES:
        raise SourceError(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
    try:
        module = importlib.import_module(f"threadline.importing.{source.replace('-', '_')}")
    except ImportError as exc:
        raise SourceError(f"{source} needs {exc.name}: pip install 'threadline[import]'") from None
    async with module.open_history(url, location) as reader:
        yield reader
