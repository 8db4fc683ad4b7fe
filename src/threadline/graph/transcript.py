"""How the transcript is stored: per-turn deltas, with a full snapshot now and then.

A plain `add_messages` channel re-stores the whole list at every checkpoint, so a turn costs
O(thread length) in serialisation and storage. `TranscriptChannel` is LangGraph's
`DeltaChannel`: checkpoints keep only each step's new messages, and a full snapshot is
written once the deltas since the last one reach a fixed fraction of the transcript. That
geometric cadence re-serialises each message a constant number of times over a thread's life
and bounds the stored deltas to a fraction of the transcript, whatever its length.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Self

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
    message_chunk_to_message,
)
from langgraph.channels.delta import DeltaChannel
from langgraph.graph.message import add_messages

from threadline.compat import MISSING

# Snapshot once the messages written since the last snapshot reach 1/SNAPSHOT_DIVISOR of the
# transcript, and never more often than every MIN_SNAPSHOT_UPDATES channel updates.
SNAPSHOT_DIVISOR = 16
MIN_SNAPSHOT_UPDATES = 12

_FINAL_MESSAGE_TYPES = frozenset({HumanMessage, AIMessage, SystemMessage, ToolMessage})
_IDS = uuid.UUID("6f1c2b1e-4d3a-4c55-9a43-0d6b2f1f6a10")


def append_messages(current: list[AnyMessage], writes: Sequence[Any]) -> list[AnyMessage]:
    """`add_messages` over a whole batch of writes, with deterministic ids.

    Stored writes are replayed in batches of any size, so the result must not depend on how
    writes are grouped: a message without an id gets one derived from the position it lands
    at (uuid4 would give it a different id on every read). Plain appends, the usual case,
    skip `add_messages` and cost one pass over the ids.
    """
    batch: list[BaseMessage] = []
    for write in writes:
        for item in write if isinstance(write, list) else [write]:
            if type(item) in _FINAL_MESSAGE_TYPES:  # replayed writes: already messages
                batch.append(item)
            else:
                batch.extend(message_chunk_to_message(m) for m in convert_to_messages([item]))
    known = _known_ids(current)
    position = len(current)
    plain_append = True
    for message in batch:
        if isinstance(message, RemoveMessage):
            plain_append = False
            continue
        if message.id is None:
            message.id = str(uuid.uuid5(_IDS, f"{position}:{message.type}:{message.content}"))
        if message.id in known:
            plain_append = False
        else:
            known.add(message.id)
            position += 1
    if plain_append:
        merged: list[AnyMessage] = [*current, *batch]  # type: ignore[list-item]
        _remember_ids(merged, known)
        return merged
    return add_messages(current, batch)  # type: ignore[arg-type,return-value]


# The ids of the last few transcripts this process produced, so that appending to one costs
# O(new messages) instead of a pass over the whole thread. Entries hold their list, so its
# `id()` cannot be reused while remembered; the length check catches in-place appends.
_ID_MEMO: OrderedDict[int, tuple[list[AnyMessage], set[str | None]]] = OrderedDict()
_ID_MEMO_SIZE = 64
_ID_MEMO_MAX_MESSAGES = 50_000  # and at most this many messages kept alive through it
_id_memo_messages = 0
_ID_MEMO_LOCK = threading.Lock()


def _known_ids(current: list[AnyMessage]) -> set[str | None]:
    with _ID_MEMO_LOCK:
        found = _ID_MEMO.get(id(current))
    if found is not None and found[0] is current and len(found[1]) == len(current):
        return set(found[1])
    ids = {m.id for m in current}
    _remember_ids(current, ids)  # a replayed snapshot is the base of every turn until the next
    return set(ids)


def _remember_ids(merged: list[AnyMessage], ids: set[str | None]) -> None:
    global _id_memo_messages
    if len(ids) != len(merged):
        return
    with _ID_MEMO_LOCK:
        if (previous := _ID_MEMO.pop(id(merged), None)) is not None:
            _id_memo_messages -= len(previous[1])
        _ID_MEMO[id(merged)] = (merged, ids)
        _id_memo_messages += len(ids)
        while len(_ID_MEMO) > _ID_MEMO_SIZE or _id_memo_messages > _ID_MEMO_MAX_MESSAGES:
            _, (_, dropped) = _ID_MEMO.popitem(last=False)
            _id_memo_messages -= len(dropped)


class TranscriptChannel(DeltaChannel[list[AnyMessage]]):
    """A `DeltaChannel` whose snapshot interval grows with the transcript it holds."""

    __slots__ = ("min_updates",)

    def __init__(
        self,
        reducer: Callable[[Any, Sequence[Any]], Any],
        typ: type[list[AnyMessage]] | None = None,
        *,
        snapshot_frequency: int = MIN_SNAPSHOT_UPDATES,
    ) -> None:
        super().__init__(reducer, typ, snapshot_frequency=snapshot_frequency)

    @property
    def snapshot_frequency(self) -> int:
        size = 0 if self.value is MISSING else len(self.value)
        return max(self.min_updates, size // SNAPSHOT_DIVISOR)

    @snapshot_frequency.setter
    def snapshot_frequency(self, value: int) -> None:
        self.min_updates = value

    def copy(self) -> Self:
        new = super().copy()
        new.min_updates = self.min_updates
        return new

    def from_checkpoint(self, checkpoint: Any) -> Self:
        new = super().from_checkpoint(checkpoint)
        new.min_updates = self.min_updates
        return new
