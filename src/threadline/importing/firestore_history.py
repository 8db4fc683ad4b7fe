"""`FirestoreChatMessageHistory`, in both of its layouts: one document per session (its id is
the session id) holding the whole conversation in a `messages` array —

- langchain-google-firestore: each entry the message's JSON as bytes (collection
  `ChatHistory` by default);
- langchain-community: each entry a `message_to_dict` map, beside `user_id` (which
  `--user-from user_id` makes the thread's owner).

Read with google-cloud-firestore (langchain-google-firestore itself needs langchain-core < 1),
page by page in document-id order. Neither layout keeps message ids or times; Firestore keeps
each document's create and update times, which become the thread's. `--url` is
`firestore://PROJECT[/DATABASE]`; credentials and `FIRESTORE_EMULATOR_HOST` come from the
environment, as Google's client finds them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from threadline.importing.sessions import (
    SourceError,
    SourceMissingError,
    SourceSession,
    SourceUnreachableError,
    decoded_session,
)

SOURCE = "firestore-history"
PAGE = 300
TIMEOUT = 30.0
PROBE_TIMEOUT = 10.0


def _entry(raw: Any) -> Any:
    """One `messages` entry as `messages_from_dict` takes it, whichever library wrote it."""
    if isinstance(raw, bytes | str):  # langchain-google-firestore: the message's JSON
        data = json.loads(raw)
        return {"type": data.get("type"), "data": data}
    return raw  # langchain-community: message_to_dict's map


class FirestoreHistoryReader:
    def __init__(self, client: Any, collection: str, count: int) -> None:
        self._client = client
        self._collection = collection
        self._count = count

    async def count_sessions(self) -> int:
        return self._count

    def _page(self, after: Any) -> list[Any]:
        query = self._client.collection(self._collection).order_by("__name__").limit(PAGE)
        if after is not None:
            query = query.start_after(after)
        return list(query.get(timeout=TIMEOUT))

    async def sessions(self) -> AsyncIterator[SourceSession]:
        after = None
        while docs := await asyncio.to_thread(self._page, after):
            for doc in docs:
                yield self._session(doc)
            after = docs[-1]

    def _session(self, doc: Any) -> SourceSession:
        values = doc.to_dict() or {}
        entries = values.get("messages")
        if not isinstance(entries, list):
            return SourceSession(doc.id, [], problem="no messages array in the document")
        try:
            rows = [(n, _entry(raw)) for n, raw in enumerate(entries)]
        except (ValueError, UnicodeDecodeError) as exc:
            return SourceSession(doc.id, [], problem=f"unreadable message ({type(exc).__name__})")
        return decoded_session(
            SOURCE,
            self._collection,
            doc.id,
            rows,
            created_at=doc.create_time.timestamp() if doc.create_time else None,
            updated_at=doc.update_time.timestamp() if doc.update_time else None,
            fields={k: v for k, v in values.items() if k != "messages"},
        )


def _open(url: str, collection: str) -> FirestoreHistoryReader:
    from google.api_core import exceptions as google_errors
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import firestore

    parts = urlsplit(url)
    if parts.scheme != "firestore" or not parts.netloc:
        raise SourceError("--url must be firestore://PROJECT or firestore://PROJECT/DATABASE")
    database = parts.path.strip("/") or None
    try:
        client = firestore.Client(project=parts.netloc, database=database)
        # No retries on the first call: an unreachable emulator or project fails in seconds
        # (Google's default retries for five minutes).
        found = client.collection(collection).count().get(retry=None, timeout=PROBE_TIMEOUT)
        count = int(found[0][0].value)
    except DefaultCredentialsError as exc:
        raise SourceUnreachableError(f"no Google credentials: {exc}") from None
    except (google_errors.GoogleAPICallError, google_errors.RetryError) as exc:
        reason = getattr(exc, "message", None) or type(exc).__name__
        raise SourceUnreachableError(f"cannot reach Firestore: {reason}") from None
    except ValueError as exc:  # a malformed collection path
        raise SourceError(f"--collection {collection!r}: {exc}") from None
    if not count:
        raise SourceMissingError(f"no documents in collection {collection!r}")
    return FirestoreHistoryReader(client, collection, count)


@asynccontextmanager
async def open_history(url: str, collection: str | None) -> AsyncIterator[FirestoreHistoryReader]:
    reader = await asyncio.to_thread(_open, url, collection or "ChatHistory")
    try:
        yield reader
    finally:
        reader._client.close()
