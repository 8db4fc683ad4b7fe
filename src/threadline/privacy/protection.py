"""Replacing what the detector finds, everywhere a turn's text can be stored.

`Protector.value(v)` walks whatever a checkpoint or a write holds — messages (content, content
parts, names, tool-call arguments, tool results), lists of them, the running summary, delta
snapshots, `Overwrite`s — and returns it with every finding replaced, counting findings by
entity. Strategies: `redact` (`[EMAIL]`), `mask` (all but the last 4 characters starred), `hash`
(a keyed HMAC, so equal values stay equal within a deployment without being readable).
`block` refuses input that holds any finding (`Protector.findings`), and redacts anything else
found later (a model reply quoting a value, say).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage

from threadline.compat import DeltaSnapshot
from threadline.privacy.detectors import Detector

PiiStrategy = Literal["off", "redact", "mask", "hash", "block"]
KEEP_LAST = 4
CLEAN_MEMORY = 100_000  # message fingerprints remembered as holding nothing


class Protector:
    def __init__(self, strategy: PiiStrategy, detector: Detector, hash_key: bytes) -> None:
        self.strategy = strategy
        self.detector = detector
        self._key = hash_key
        # Messages this process found nothing in: a snapshot re-stores a whole transcript,
        # which need not be scanned again.
        self._clean: OrderedDict[tuple[Any, ...], None] = OrderedDict()

    def checkpoint(self, checkpoint: Mapping[str, Any], counts: Counter[str]) -> dict[str, Any]:
        values = checkpoint.get("channel_values") or {}
        return {**checkpoint, "channel_values": self.value(dict(values), counts)}

    def writes(self, writes: Any, counts: Counter[str]) -> list[tuple[str, Any]]:
        return [(channel, self.value(value, counts)) for channel, value in writes]

    def record(self, record: Mapping[str, Any], counts: Counter[str]) -> dict[str, Any]:
        """A thread record's text (title, client metadata); ids and times stay."""
        return {
            **record,
            "title": self.text(record.get("title") or "", counts),
            "metadata": self.value(record.get("metadata") or {}, counts),
        }

    def _replacement(self, entity: str, value: str) -> str:
        if self.strategy == "mask":
            return "*" * max(len(value) - KEEP_LAST, 0) + value[-KEEP_LAST:]
        if self.strategy == "hash":
            digest = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:16]
            return f"[{entity.upper()}:{digest}]"
        return f"[{entity.upper()}]"  # redact, and block's fallback

    def text(self, text: str, counts: Counter[str]) -> str:
        findings = self.detector.find(text)
        if not findings:
            return text
        pieces: list[str] = []
        end = 0
        for f in findings:
            pieces += [text[end : f.start], self._replacement(f.entity, text[f.start : f.end])]
            counts[f.entity] += 1
            end = f.end
        return "".join(pieces) + text[end:]

    def findings(self, value: Any) -> Counter[str]:
        """What `value` holds, by entity (nothing is changed)."""
        counts: Counter[str] = Counter()
        self.value(value, counts)
        return counts

    def value(self, value: Any, counts: Counter[str]) -> Any:
        """`value` with every finding replaced (new objects; `value` is left as it was)."""
        if isinstance(value, str):
            return self.text(value, counts)
        if isinstance(value, BaseMessage):
            return self.message(value, counts)
        if isinstance(value, DeltaSnapshot):
            return DeltaSnapshot(self.value(value.value, counts))
        if isinstance(value, list | tuple):
            return type(value)(self.value(item, counts) for item in value)
        if isinstance(value, Mapping):
            return {key: self.value(item, counts) for key, item in value.items()}
        overwrite = _overwritten(value)
        if overwrite is not None:
            return type(value)(self.value(overwrite, counts))
        return value

    def message(self, message: BaseMessage, counts: Counter[str]) -> BaseMessage:
        known = _fingerprint(message)
        if known in self._clean:  # stored before by this process: already protected
            self._clean.move_to_end(known)
            return message
        before = sum(counts.values())
        protected = self._message(message, counts)
        if sum(counts.values()) == before:
            self._clean[known] = None
            while len(self._clean) > CLEAN_MEMORY:
                self._clean.popitem(last=False)
        return protected

    def _content(self, content: Any, counts: Counter[str]) -> Any:
        if isinstance(content, str):
            return self.text(content, counts)
        return [  # content parts: only text is text (an image's data is not scanned)
            {**part, "text": self.text(part["text"], counts)}
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            else self.text(part, counts)
            if isinstance(part, str)
            else part
            for part in content
        ]

    def _message(self, message: BaseMessage, counts: Counter[str]) -> BaseMessage:
        changes: dict[str, Any] = {"content": self._content(message.content, counts)}
        if message.name is not None:
            changes["name"] = self.text(message.name, counts)
        if isinstance(message, AIMessage):
            changes["tool_calls"] = [
                {**call, "args": self.value(call["args"], counts)} for call in message.tool_calls
            ]
            changes["invalid_tool_calls"] = [
                {**call, "args": self.value(call.get("args"), counts)}
                for call in message.invalid_tool_calls
            ]
        kwargs = dict(message.additional_kwargs)
        if "tool_calls" in kwargs:  # the provider's own copy: arguments as JSON text
            kwargs["tool_calls"] = [_protected_call(self, c, counts) for c in kwargs["tool_calls"]]
        if "function_call" in kwargs:
            kwargs["function_call"] = _protected_function(self, kwargs["function_call"], counts)
        changes["additional_kwargs"] = kwargs
        return message.model_copy(update=changes)


def _protected_function(protector: Protector, function: Any, counts: Counter[str]) -> Any:
    if not isinstance(function, Mapping) or not isinstance(function.get("arguments"), str):
        return protector.value(function, counts)
    try:
        arguments = json.dumps(protector.value(json.loads(function["arguments"]), counts))
    except json.JSONDecodeError:
        arguments = protector.text(function["arguments"], counts)
    return {**function, "arguments": arguments}


def _protected_call(protector: Protector, call: Any, counts: Counter[str]) -> Any:
    if isinstance(call, Mapping) and "function" in call:
        return {**call, "function": _protected_function(protector, call["function"], counts)}
    return protector.value(call, counts)


def _fingerprint(message: BaseMessage) -> tuple[Any, ...]:
    calls = getattr(message, "tool_calls", None)
    return (type(message), message.id, hash(repr((message.content, message.name, calls))))


def _overwritten(value: Any) -> Any:
    """The value inside LangGraph's `Overwrite`, if `value` is one."""
    from langgraph.types import Overwrite

    return value.value if isinstance(value, Overwrite) else None
