"""Delta channels on the Postgres schema: history in O(new writes), old snapshots retired.

A `DeltaChannel` checkpoint stores no value for the channel; reading it means replaying the
writes of its ancestors since the nearest snapshot. Done naively that is O(thread) per turn.
Two facts make it O(turn):

- A checkpoint's history is immutable: history(C) = history(parent(C)) + the writes stored
  at parent(C). So decoded histories are cached in-process under (thread, ns, checkpoint id)
  and a turn fetches and decodes only its parent's writes, in one query. Entries can never be
  stale, so any number of replicas can each keep their own cache.
- Nothing is deleted by writing: every checkpoint and every branch stays readable. What
  would grow is snapshots (a transcript snapshot every 1/16 of its length adds up to ~17
  transcripts). A snapshot that replay rebuilds exactly ("derived": the seed it would start
  from plus the writes since) is recorded in `threadline_delta_seeds`; when the next derived
  snapshot of the channel is recorded, the older ones are retired (blob and marker dropped),
  so a thread keeps its deltas, the snapshots that carry information (a branch's first, an
  `Overwrite`'s), and one derived snapshot per channel. Reading an old checkpoint may then
  replay from further back; reading the latest stays O(turn). Under durability "exit"
  LangGraph stores no writes for a channel it snapshots; the saver stores that tail itself
  (see `missing_tail`), so those snapshots become derived too.
"""

from __future__ import annotations

import sys
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.messages import BaseMessage
from langgraph.checkpoint.base import DeltaChannelHistory, writes_sort_key
from psycopg import AsyncCursor
from psycopg.rows import DictRow

from threadline.compat import DeltaSnapshot

HistoryKey = tuple[str, str, str, str]  # thread, namespace, checkpoint id, channel
StoredWrite = tuple[str, str, int, str, bytes]  # task id, task path, idx, type, blob
# Ancestors a history read steps through looking for a cached one before a full walk.
MAX_PARENT_STEPS = 8
# Decoded delta histories kept per process (about one entry per active thread).
DEFAULT_HISTORY_CACHE_BYTES = 32 * 1024 * 1024

# The target's parent, the requested channels the parent stores a value for (a seed), and
# the parent's writes to those channels: everything one step of history needs.
PARENT_STEP_SQL = """
WITH target AS (
    SELECT parent_checkpoint_id AS parent FROM checkpoints
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(id)s
), seeded AS (
    SELECT coalesce(array_agg(ch), '{}') AS channels
    FROM target JOIN checkpoints p ON p.thread_id = %(thread)s AND p.checkpoint_ns = %(ns)s
        AND p.checkpoint_id = target.parent,
    unnest(%(channels)s::text[]) AS ch
    WHERE p.checkpoint -> 'channel_values' ? ch OR EXISTS (
        SELECT 1 FROM checkpoint_blobs b
        WHERE b.thread_id = %(thread)s AND b.checkpoint_ns = %(ns)s AND b.channel = ch
            AND b.version = p.checkpoint -> 'channel_versions' ->> ch AND b.type <> 'empty'
    )
)
SELECT target.parent, seeded.channels AS seeded, w.task_id, w.task_path, w.idx, w.channel,
    w.type, w.blob
FROM target CROSS JOIN seeded
LEFT JOIN checkpoint_writes w ON w.thread_id = %(thread)s AND w.checkpoint_ns = %(ns)s
    AND w.checkpoint_id = target.parent AND w.channel = ANY(%(channels)s::text[])
"""

SEEDS_MIGRATION = """
CREATE TABLE IF NOT EXISTS threadline_delta_seeds (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    channel TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, checkpoint_id)
)"""

# Record a snapshot as derived, and retire the other derived snapshots of the channel: their
# blob goes, and so does the `true` marker on their checkpoint, so every reader (this saver's
# and the stock one) walks past them to an older snapshot or to the start of the thread.
RETIRE_SEEDS_SQL = """
WITH retired AS (
    DELETE FROM threadline_delta_seeds
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND channel = %(channel)s
        AND checkpoint_id <> %(id)s
    RETURNING checkpoint_id, version
), unblobbed AS (
    DELETE FROM checkpoint_blobs b USING retired r
    WHERE b.thread_id = %(thread)s AND b.checkpoint_ns = %(ns)s AND b.channel = %(channel)s
        AND b.version = r.version
), unmarked AS (
    UPDATE checkpoints c SET checkpoint = c.checkpoint #- ARRAY['channel_values', %(channel)s]
    FROM retired r
    WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = %(ns)s
        AND c.checkpoint_id = r.checkpoint_id
)
INSERT INTO threadline_delta_seeds (thread_id, checkpoint_ns, channel, checkpoint_id, version)
VALUES (%(thread)s, %(ns)s, %(channel)s, %(id)s, %(version)s) ON CONFLICT DO NOTHING
"""
# A snapshot's tail: the messages it added whose writes were never stored, written onto the
# snapshot's parent, which makes the snapshot derived. The same shape as LangGraph's exit-mode
# writes. Only if the parent is stored (a walk that does not find it reads none of its writes)
# and the snapshot is its only child: a sibling branched off before the tail existed was not
# made to snapshot (LangGraph forces that only for a parent with pending writes), so its history
# would replay the tail too. A branch made later sees the tail and snapshots.
STORE_TAIL_SQL = """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
SELECT %(thread)s, %(ns)s, %(parent)s, %(task)s, %(path)s, %(idx)s, %(channel)s, %(type)s,
    %(blob)s
WHERE EXISTS (
    SELECT 1 FROM checkpoints
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(parent)s
) AND NOT EXISTS (
    SELECT 1 FROM checkpoints
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s
        AND parent_checkpoint_id = %(parent)s AND checkpoint_id <> %(child)s
)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
DO UPDATE SET blob = EXCLUDED.blob
RETURNING 1
"""
TAIL_TASK_NAMESPACE = uuid.UUID("0b7f4f8e-3c2a-4d59-8f1e-5a6c7d8e9f10")
# After checkpoints were deleted (runs, prune), a recorded snapshot's chain may be broken:
# forget the records, so that those snapshots are kept for good.
FORGET_SEEDS_SQL = "DELETE FROM threadline_delta_seeds WHERE thread_id = ANY(%s)"


@dataclass(frozen=True)
class StoredSnapshots:
    """The delta snapshots one stored checkpoint holds: channel -> (version, value)."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    values: dict[str, tuple[str, Any]]


class PendingSnapshots:
    """Snapshots waiting for their check, one entry per (thread, namespace).

    A snapshot is checked at the thread's next put, when the writes that led to it are
    surely stored (under durability "exit" they are put beside the checkpoint, not before
    it). Bounded by the items the waiting snapshots hold (the transcripts are usually the very
    objects the history cache holds too); an entry pushed out is never checked, and its
    snapshot is simply kept.
    """

    def __init__(self, max_items: int = 100_000) -> None:
        self.max_items = max_items
        self._entries: OrderedDict[tuple[str, str], tuple[StoredSnapshots, int]] = OrderedDict()
        self._items = 0

    def swap(self, key: tuple[str, str], new: StoredSnapshots | None) -> StoredSnapshots | None:
        """Take the entry waiting for `key`, leaving `new` (if any) in its place."""
        earlier = self._pop(key)
        if new is not None:
            weight = sum(_seed_weight(value) for _, value in new.values.values())
            self._entries[key] = (new, weight)
            self._items += weight
            while self._items > self.max_items:
                self._pop(next(iter(self._entries)))
        return earlier

    def forget(self, thread_ids: Sequence[str]) -> None:
        doomed = set(thread_ids)
        for key in [k for k in self._entries if k[0] in doomed]:
            self._pop(key)

    def _pop(self, key: tuple[str, str]) -> StoredSnapshots | None:
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self._items -= found[1]
        return found[0]


class LoadWrite(Protocol):
    """Decodes a stored write from its place: thread (id, namespace), checkpoint, task, idx,
    channel (see `places`)."""

    def __call__(
        self,
        typed: tuple[str, bytes],
        thread: tuple[str, str],
        checkpoint_id: str,
        task_id: str,
        idx: int,
        channel: str,
    ) -> Any: ...


class HistoryCache:
    """LRU of decoded delta histories, bounded by the (estimated) bytes of the objects it holds
    (about one entry per active thread: extending an entry drops its parent's)."""

    def __init__(self, max_bytes: int = DEFAULT_HISTORY_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[HistoryKey, tuple[DeltaChannelHistory, int]] = OrderedDict()
        self._weight = 0
        # (thread, namespace) -> channel -> newest checkpoint id cached for it
        self._newest: dict[tuple[str, str], dict[str, str]] = {}

    def newest(self, thread_id: str, checkpoint_ns: str) -> dict[str, str]:
        """Per channel, the newest checkpoint of the thread whose history is cached."""
        return dict(self._newest.get((thread_id, checkpoint_ns), {}))

    def get(self, key: HistoryKey) -> DeltaChannelHistory | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def weight_of(self, key: HistoryKey) -> int | None:
        found = self._entries.get(key)
        return None if found is None else found[1]

    def put(self, key: HistoryKey, history: DeltaChannelHistory, weight: int | None = None) -> None:
        """Cache `history`; `weight`, its estimated bytes, is computed (O(history)) if not given:
        an entry extended from its parent's passes the parent's plus what it added."""
        self.discard(key)
        weight = approx_bytes(history) if weight is None else weight
        if weight > self.max_bytes:
            return
        self._entries[key] = (history, weight)
        self._weight += weight
        thread_id, checkpoint_ns, checkpoint_id, channel = key
        newest = self._newest.setdefault((thread_id, checkpoint_ns), {})
        if newest.get(channel, "") < checkpoint_id:
            newest[channel] = checkpoint_id
        while self._weight > self.max_bytes:
            dropped_key, (_, dropped) = self._entries.popitem(last=False)
            self._weight -= dropped
            self._forget(dropped_key)

    def forget_thread(self, thread_id: str) -> None:
        """Drop every history of a thread (it was deleted: nothing of it stays in memory)."""
        for key in [k for k in self._entries if k[0] == thread_id]:
            self.discard(key)

    def discard(self, key: HistoryKey) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._weight -= found[1]
            self._forget(key)

    def _forget(self, key: HistoryKey) -> None:
        thread_id, checkpoint_ns, checkpoint_id, channel = key
        newest = self._newest.get((thread_id, checkpoint_ns))
        if newest is not None and newest.get(channel) == checkpoint_id:
            del newest[channel]
            if not newest:
                del self._newest[(thread_id, checkpoint_ns)]

    def __len__(self) -> int:
        return len(self._entries)


# Estimated bytes of a decoded message beyond its text, and of a decoded value per stored byte.
MESSAGE_OVERHEAD_BYTES = 1200
DECODED_BYTES_PER_STORED_BYTE = 4


def approx_bytes(history: DeltaChannelHistory) -> int:
    """A rough size of a decoded history in memory: enough to bound a cache by bytes."""
    seed = history.get("seed")
    value = seed.value if isinstance(seed, DeltaSnapshot) else seed
    return _item_bytes(value) + sum(_item_bytes(write[2]) for write in history["writes"])


def stored_bytes_in_memory(blob: bytes | None) -> int:
    """Estimated in-memory size of a value decoded from `blob`."""
    return 64 + DECODED_BYTES_PER_STORED_BYTE * len(blob or b"")


def _item_bytes(item: Any) -> int:
    if item is None:
        return 0
    if isinstance(item, BaseMessage):
        content = item.content
        return MESSAGE_OVERHEAD_BYTES + (len(content) if isinstance(content, str) else 512)
    if isinstance(item, list | tuple):
        return 56 + sum(_item_bytes(i) for i in item)
    return sys.getsizeof(item)


def _seed_weight(seed: Any) -> int:
    value = seed.value if isinstance(seed, DeltaSnapshot) else seed
    try:
        return len(value)
    except TypeError:
        return 1


async def delta_history(
    cache: HistoryCache,
    cursor: Callable[[], Any],
    load_write: LoadWrite,
    full_history: Callable[[Sequence[str]], Awaitable[Mapping[str, DeltaChannelHistory]]],
    key: tuple[str, str, str],
    channels: Sequence[str],
) -> dict[str, DeltaChannelHistory]:
    """History of `channels` at checkpoint `key`, extending the nearest ancestor's cached
    history by the writes since (one query per step, at most `MAX_PARENT_STEPS`: with a
    checkpoint per step, a turn's own checkpoints were never read, only its last).

    `full_history` is the full ancestor walk, used when no near ancestor's history is cached
    or one on the way holds a seed (a snapshot: starting over from it keeps entries short).
    """
    thread_id, checkpoint_ns, _ = key
    result: dict[str, DeltaChannelHistory] = {}
    pending: list[str] = []
    for ch in channels:
        if (found := cache.get((*key, ch))) is None:
            pending.append(ch)
        else:
            result[ch] = found
    walk: list[str] = []
    if not pending:  # all cached: no connection taken from the pool
        return result
    # The writes at each ancestor (by its id), nearest first.
    newer: list[tuple[str, dict[str, list[StoredWrite]]]] = []
    target = key[2]
    async with cursor() as cur:
        for _ in range(MAX_PARENT_STEPS):
            if not pending:
                break
            parent, seeded, writes = await _parent_step(
                cur, (thread_id, checkpoint_ns, target), pending
            )
            if parent is None:
                break
            newer.append((parent, writes))
            still: list[str] = []
            for ch in pending:
                base = None if ch in seeded else cache.get((thread_id, checkpoint_ns, parent, ch))
                if ch in seeded:
                    walk.append(ch)
                elif base is None:
                    still.append(ch)
                else:
                    result[ch] = _extended(base, newer, (thread_id, checkpoint_ns), ch, load_write)
                    base_weight = cache.weight_of((thread_id, checkpoint_ns, parent, ch))
                    added = sum(
                        stored_bytes_in_memory(w[4]) for _, step in newer for w in step.get(ch, ())
                    )
                    cache.put(
                        (*key, ch), result[ch], None if base_weight is None else base_weight + added
                    )
                    cache.discard((thread_id, checkpoint_ns, parent, ch))
            pending, target = still, parent
    walk.extend(pending)
    if walk:
        for ch, history in (await full_history(walk)).items():
            result[ch] = history
            cache.put((*key, ch), history)
    return result


def _extended(
    base: DeltaChannelHistory,
    newer: list[tuple[str, dict[str, list[StoredWrite]]]],
    thread: tuple[str, str],
    channel: str,
    load_write: LoadWrite,
) -> DeltaChannelHistory:
    """`base` followed by the channel's writes at each ancestor since, oldest first."""
    writes = list(base["writes"])
    for checkpoint_id, step in reversed(newer):
        own = sorted(step.get(channel, ()), key=lambda w: writes_sort_key(w[1], w[0], w[2]))
        writes.extend(
            (w[0], channel, load_write((w[3], w[4]), thread, checkpoint_id, w[0], w[2], channel))
            for w in own
        )
    history: DeltaChannelHistory = {"writes": writes}
    if "seed" in base:
        history["seed"] = base["seed"]
    return history


async def _parent_step(
    cur: AsyncCursor[DictRow], key: tuple[str, str, str], channels: list[str]
) -> tuple[str | None, set[str], dict[str, list[StoredWrite]]]:
    thread_id, checkpoint_ns, checkpoint_id = key
    await cur.execute(
        PARENT_STEP_SQL,
        {"thread": thread_id, "ns": checkpoint_ns, "id": checkpoint_id, "channels": channels},
    )
    rows = await cur.fetchall()
    if not rows:
        return None, set(), {}
    writes: dict[str, list[StoredWrite]] = {}
    for row in rows:
        if row["channel"] is not None:
            writes.setdefault(row["channel"], []).append(
                (row["task_id"], row["task_path"], row["idx"], row["type"], row["blob"])
            )
    return rows[0]["parent"], set(rows[0]["seeded"] or ()), writes


def missing_tail(value: Any, history: DeltaChannelHistory) -> list[BaseMessage] | None:
    """What a snapshot holds beyond what replaying `history` rebuilds: `[]` if the snapshot
    is exactly that replay ("derived"), the trailing messages if it is that replay plus
    messages whose writes were never stored (durability "exit" stores no writes for a
    channel it snapshots), None if it is anything else.

    The saver has no reducer to replay with, so only a message transcript qualifies:
    messages with distinct ids that start with the seed's followed by the written ones, item
    for item (the same objects, usually). An `add_messages`-style reducer returns exactly that
    for such writes. A snapshot that started a branch, or followed writes that another branch
    consumed, an `Overwrite` or a removal, never matches.
    """
    if not isinstance(value, list) or not all(isinstance(m, BaseMessage) for m in value):
        return None
    ids = {m.id for m in value}
    if None in ids or len(ids) != len(value):
        return None
    seed: Any = history.get("seed", [])
    base = seed.value if isinstance(seed, DeltaSnapshot) else seed
    if not isinstance(base, list):
        return None
    items = list(base)
    for _, _, written in history["writes"]:
        items.extend(written if isinstance(written, list) else [written])
    if len(items) > len(value) or not all(
        a is b or a == b for a, b in zip(items, value, strict=False)
    ):
        return None
    return value[len(items) :]


def tail_task_id(checkpoint_id: str) -> str:
    """Task id of the stored tail writes of a snapshot (a valid UUID, never the null task)."""
    return str(uuid.uuid5(TAIL_TASK_NAMESPACE, checkpoint_id))


__all__ = [
    "DEFAULT_HISTORY_CACHE_BYTES",
    "FORGET_SEEDS_SQL",
    "RETIRE_SEEDS_SQL",
    "SEEDS_MIGRATION",
    "HistoryCache",
    "PendingSnapshots",
    "StoredSnapshots",
    "approx_bytes",
    "delta_history",
    "missing_tail",
    "stored_bytes_in_memory",
    "tail_task_id",
]
