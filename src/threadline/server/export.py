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
    return (_jsonl if format == "jsonl" else _markdown)(record, values)


def _jsonl(record: Mapping[str, Any] | None, values: Mapping[str, Any]) -> Iterator[str]:
    head = {
        "record": dict(record) if record else None,
        "summary": values.get("summary") or "",
        "summarized_count": values.get("summarized_count") or 0,
    }
    yield json.dumps(head, ensure_ascii=False) + "\n"
    for message in values.get("messages") or []:
        yield json.dumps(message_to_dict(message), ensure_ascii=False, default=str) + "\n"


def _markdown(record: Mapping[str, Any] | None, values: Mapping[str, Any]) -> Iterator[str]:
    shown = dict(record or {})
    yield f"# {shown.get('title') or shown.get('thread_id') or 'Conversation'}\n\n"
    for name in ("thread_id", "user_id", "created_at", "updated_at", "message_count"):
        if name in shown:
            yield f"- {name}: {shown[name]}\n"
    if summary := values.get("summary"):
        yield f"\n## Summary of the first {values.get('summarized_count') or 0} messages\n\n"
        yield f"{summary}\n"
    yield "\n## Transcript\n\n"
    messages: Sequence[BaseMessage] = values.get("messages") or []
    for message in messages:
        yield f"**{message.type}**: {message.text}\n\n"
