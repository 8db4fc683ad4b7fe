"""A thread as a download: JSON Lines (LangChain's message dicts) or Markdown for people.

JSONL: the first line is `{"record": ..., "summary": ..., "summarized_count": ...}`; every
further line is one message as `message_to_dict` writes it, so
`messages_from_dict([json.loads(line) for line in lines[1:]])` reads the transcript back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import BaseMessage, message_to_dict

ExportFormat = Literal["jsonl", "markdown"]
MEDIA_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson", "markdown": "text/markdown"}


def export_lines(
    format: ExportFormat, record: Mapping[str, Any] | None, values: Mapping[str, Any]
) -> Iterator[str]:
    """The export, line by line (each ends with a newline)."""
    messages: Sequence[BaseMessage] = values.get("messages") or []
    summary = values.get("summary") or ""
    if format == "jsonl":
        head = {
            "record": dict(record) if record else None,
            "summary": summary,
            "summarized_count": values.get("summarized_count") or 0,
        }
        yield json.dumps(head, ensure_ascii=False) + "\n"
        for message in messages:
            yield json.dumps(message_to_dict(message), ensure_ascii=False, default=str) + "\n"
        return
    title = (record or {}).get("title") or (record or {}).get("thread_id") or "Conversation"
    yield f"# {title}\n\n"
    if record:
        for name in ("thread_id", "user_id", "created_at", "updated_at", "message_count"):
            yield f"- {name}: {record.get(name)}\n"
        yield "\n"
    if summary:
        yield f"## Summary of the first {values.get('summarized_count') or 0} messages\n\n"
        yield f"{summary}\n\n"
    yield "## Transcript\n\n"
    for message in messages:
        yield f"**{message.type}**: {message.text}\n\n"
