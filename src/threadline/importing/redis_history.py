"""`RedisChatMessageHistory`, in both of its layouts:

- langchain-community: one list per session at `message_store:<session_id>`, newest first
  (`LPUSH` of `message_to_dict` JSON), no ids or times of its own;
- langchain-redis: one RedisJSON document per message at `chat:<session_id>:<ULID>`
  (`type`, `message_id`, `data`, `session_id`, `timestamp`), read in `timestamp` order, as the
  library's own `messages` does; the ULID names the message.

Keys are found with SCAN (no index needed); each session's messages are read when it is
imported, so memory holds key names only.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from threadline.importing.sessions import (
    SourceError,
    SourceMissingError,
    SourceSession,
    SourceUnreachableError,
    decoded_session,
)

SOURCE = "redis-history"
LIST_PREFIX = "message_store:"  # langchain-community's default
JSON_PREFIX = "chat:"  # langchain-redis's default
BATCH = 500


class RedisHistoryReader:
    def __init__(self, client: aioredis.Redis, prefixes: list[str]) -> None:
        self._client = client
        self._prefixes = prefixes
        self._lists: list[tuple[str, str]] = []  # (session, key) of the community layout
        self._docs: dict[tuple[str, str], list[str]] = defaultdict(list)  # (prefix, session)

    async def scan(self) -> None:
        """Find every session's keys (both layouts) under the prefixes."""
        for prefix in self._prefixes:
            pattern = _escaped(prefix) + "*"
            async for key in self._client.scan_iter(match=pattern, count=1000, _type="list"):
                self._lists.append((key[len(prefix) :], key))
            async for key in self._client.scan_iter(match=pattern, count=1000, _type="ReJSON-RL"):
                session, _, ulid = key[len(prefix) :].rpartition(":")  # a ULID has no ':'
                if session and ulid:
                    self._docs[(prefix, session)].append(key)
        self._lists.sort()

    async def count_sessions(self) -> int:
        return len(self._lists) + len(self._docs)

    async def sessions(self) -> AsyncIterator[SourceSession]:
        for session_id, key in self._lists:
            yield await self._list_session(session_id, key)
        for (prefix, session_id), keys in sorted(self._docs.items()):
            yield await self._json_session(prefix, session_id, keys)

    async def _list_session(self, session_id: str, key: str) -> SourceSession:
        """langchain-community: oldest last in the list; position counts from the oldest, so
        it stays put as the list grows."""
        items = list(reversed(await self._client.lrange(key, 0, -1)))
        where = key[: len(key) - len(session_id)]
        return decoded_session(SOURCE, where, session_id, list(enumerate(items)))

    async def _json_session(self, prefix: str, session_id: str, keys: list[str]) -> SourceSession:
        """langchain-redis: the documents in `timestamp` order (ULID to break ties)."""
        docs: list[dict[str, Any]] = []
        for start in range(0, len(keys), BATCH):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys[start : start + BATCH]:
                    pipe.execute_command("JSON.GET", key)
                docs.extend(json.loads(raw) for raw in await pipe.execute() if raw is not None)
        docs = [d for d in docs if isinstance(d, dict) and d.get("session_id") == session_id]
        docs.sort(key=lambda d: (float(d.get("timestamp") or 0), str(d.get("message_id"))))
        rows = [
            (doc.get("message_id"), {"type": doc.get("type"), "data": _with_id(doc)})
            for doc in docs
        ]
        times = [float(d["timestamp"]) for d in docs if d.get("timestamp") is not None]
        fields = {k: v for k, v in (docs[0] if docs else {}).items() if k not in _DOC_FIELDS}
        session = decoded_session(
            SOURCE,
            prefix,
            session_id,
            rows,
            created_at=min(times, default=None),
            updated_at=max(times, default=None),
            fields=fields,
        )
        return session


_DOC_FIELDS = frozenset({"type", "message_id", "data", "session_id", "timestamp"})


def _with_id(doc: dict[str, Any]) -> Any:
    """The message's data with the document's ULID as its id (the library stores none)."""
    data = doc.get("data")
    if isinstance(data, dict) and not data.get("id") and doc.get("message_id"):
        return {**data, "id": str(doc["message_id"])}
    return data


def _escaped(prefix: str) -> str:
    """`prefix` as a literal in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


@asynccontextmanager
async def open_history(url: str, key_prefix: str | None) -> AsyncIterator[RedisHistoryReader]:
    prefixes = [key_prefix] if key_prefix else [JSON_PREFIX, LIST_PREFIX]
    try:
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=10, socket_timeout=60
        )
    except ValueError as exc:
        raise SourceError(f"--url is not a Redis URL: {exc}") from None
    try:
        try:
            await client.ping()
        except ResponseError as exc:
            raise SourceUnreachableError(f"Redis refused the connection: {exc}") from None
        except (RedisError, OSError) as exc:
            raise SourceUnreachableError(f"cannot reach Redis: {exc}") from None
        reader = RedisHistoryReader(client, prefixes)
        try:
            await reader.scan()
        except ResponseError as exc:  # e.g. SCAN TYPE on a Redis before 6
            raise SourceError(f"cannot list the history keys: {exc}") from None
        if not await reader.count_sessions():
            raise SourceMissingError(
                f"no chat history under {' or '.join(repr(p + '*') for p in prefixes)}"
            )
        yield reader
    finally:
        await client.aclose()
