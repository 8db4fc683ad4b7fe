"""Moving in: chat histories kept by LangChain's message-history classes, imported as threads.

One module per source reads its sessions (`postgres_history`, `redis_history`, `sql_history`,
`dynamodb_history`, `firestore_history`); `threads` writes each session as a thread through the
path a served turn takes, so records, PII protection and encryption apply as they would.
"""

from __future__ import annotations

from threadline.importing.sessions import (
    SOURCES,
    HistoryReader,
    SourceError,
    SourceMissingError,
    SourceSession,
    SourceUnreachableError,
    open_reader,
)
from threadline.importing.threads import ImportReport, ThreadImporter

__all__ = [
    "SOURCES",
    "HistoryReader",
    "ImportReport",
    "SourceError",
    "SourceMissingError",
    "SourceSession",
    "SourceUnreachableError",
    "ThreadImporter",
    "open_reader",
]
