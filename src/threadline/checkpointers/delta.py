"""Delta channels on the Postgres schema: history in O(new writes), compaction at snapshots.

A `DeltaChannel` checkpoint stores no value for the channel; reading it means replaying the
writes of its ancestors since the nearest snapshot. Done naively that is O(thread) per turn.
Two facts make it O(turn):

- A checkpoint's history is immutable: history(C) = history(parent(C)) + the writes stored
  at parent(C). So decoded histories are cached in-process under (thread, ns, checkpoint id)
  and a turn fetches and decodes only its parent's writes, in one query. Entries can never be
  stale, so any number of replicas can each keep their own cache.
- Once a checkpoint holds a snapshot of every delta channel (LangGraph writes it and leaves no
  `counters_since_delta_snapshot` behind), nothing older is needed to read it. Storing such a
  checkpoint deletes the thread's older checkpoints, their writes and unreferenced blobs in the
  same transaction, so storage stays one snapshot plus the deltas since.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from langgraph.checkpoint.base import DeltaChannelHistory, writes_sort_key
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg import AsyncCursor
from psycopg.rows import DictRow

Statement = tuple[str, Sequence[Any]]
HistoryKey = tuple[str, str, str, str]  # thread, namespace, checkpoint id, channel

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

COMPACT_SUPERSEDED_SQL = (
    """DELETE FROM checkpoint_writes
    WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id < %s""",
    """DELETE FROM checkpoints
    WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id < %s""",
)
COMPACT_BLOBS_SQL = """DELETE FROM checkpoint_blobs b
    WHERE b.thread_id = %s AND b.checkpoint_ns = %s AND NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
            AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version
    )"""


class Loads(Protocol):
    def __call__(self, data: tuple[str, bytes]) -> Any: ...


class HistoryCache:
    """LRU of decoded delta histories, bounded by the number of writes and seeded values it
    holds (about one entry per active thread: extending an entry drops its parent's)."""

    def __init__(self, max_weight: int = 100_000) -> None:
        self.max_weight = max_weight
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

    def put(self, key: HistoryKey, history: DeltaChannelHistory) -> None:
        self.discard(key)
        weight = 1 + len(history["writes"]) + _seed_weight(history.get("seed"))
        if weight > self.max_weight:
            return
        self._entries[key] = (history, weight)
        self._weight += weight
        thread_id, checkpoint_ns, checkpoint_id, channel = key
        newest = self._newest.setdefault((thread_id, checkpoint_ns), {})
        if newest.get(channel, "") < checkpoint_id:
            newest[channel] = checkpoint_id
        while self._weight > self.max_weight:
            dropped_key, (_, dropped) = self._entries.popitem(last=False)
            self._weight -= dropped
            self._forget(dropped_key)

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


def _seed_weight(seed: Any) -> int:
    value = seed.value if isinstance(seed, _DeltaSnapshot) else seed
    try:
        return len(value)
    except TypeError:
        return 1


async def delta_history(
    cache: HistoryCache,
    cursor: Callable[[], Any],
    loads: Loads,
    full_history: Callable[[Sequence[str]], Awaitable[Mapping[str, DeltaChannelHistory]]],
    key: tuple[str, str, str],
    channels: Sequence[str],
) -> dict[str, DeltaChannelHistory]:
    """History of `channels` at checkpoint `key`, extending the parent's cached history.

    `full_history` is the full ancestor walk, used when the parent's history is not cached
    or the parent holds a seed (a snapshot: starting over from it keeps entries short).
    """
    thread_id, checkpoint_ns, _ = key
    result: dict[str, DeltaChannelHistory] = {}
    missing: list[str] = []
    for ch in channels:
        found = cache.get((*key, ch))
        if found is None:
            missing.append(ch)
        else:
            result[ch] = found
    if not missing:
        return result
    async with cursor() as cur:
        parent, seeded, writes = await _parent_step(cur, key, missing)
    walk: list[str] = []
    for ch in missing:
        previous = None
        if parent is not None and ch not in seeded:
            previous = cache.get((thread_id, checkpoint_ns, parent, ch))
        if parent is None or previous is None:
            walk.append(ch)
            continue
        own = sorted(writes.get(ch, ()), key=lambda w: writes_sort_key(w[1], w[0], w[2]))
        history: DeltaChannelHistory = {
            "writes": [*previous["writes"], *((w[0], ch, loads((w[3], w[4]))) for w in own)]
        }
        if "seed" in previous:
            history["seed"] = previous["seed"]
        result[ch] = history
        cache.put((*key, ch), history)
        cache.discard((thread_id, checkpoint_ns, parent, ch))
    if walk:
        for ch, history in (await full_history(walk)).items():
            result[ch] = history
            cache.put((*key, ch), history)
    return result


async def _parent_step(
    cur: AsyncCursor[DictRow], key: tuple[str, str, str], channels: list[str]
) -> tuple[str | None, set[str], dict[str, list[tuple[str, str, int, str, bytes]]]]:
    thread_id, checkpoint_ns, checkpoint_id = key
    await cur.execute(
        PARENT_STEP_SQL,
        {"thread": thread_id, "ns": checkpoint_ns, "id": checkpoint_id, "channels": channels},
    )
    rows = await cur.fetchall()
    if not rows:
        return None, set(), {}
    writes: dict[str, list[tuple[str, str, int, str, bytes]]] = {}
    for row in rows:
        if row["channel"] is not None:
            writes.setdefault(row["channel"], []).append(
                (row["task_id"], row["task_path"], row["idx"], row["type"], row["blob"])
            )
    return rows[0]["parent"], set(rows[0]["seeded"] or ()), writes


def compaction_statements(
    thread_id: str, checkpoint_ns: str, checkpoint_id: str, checkpoint: Any, metadata: Any
) -> list[Statement]:
    """Deletes of everything a new checkpoint supersedes, if it snapshots all delta channels."""
    snapshots = any(isinstance(v, _DeltaSnapshot) for v in checkpoint["channel_values"].values())
    if not snapshots or metadata.get("counters_since_delta_snapshot"):
        return []
    target = (thread_id, checkpoint_ns, checkpoint_id)
    superseded = [(sql, target) for sql in COMPACT_SUPERSEDED_SQL]
    return [*superseded, (COMPACT_BLOBS_SQL, (thread_id, checkpoint_ns))]


__all__ = ["HistoryCache", "compaction_statements", "delta_history"]
