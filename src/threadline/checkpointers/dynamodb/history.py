"""Delta-channel histories: the walk up a checkpoint's parent chain, in a few queries.

A `DeltaChannel` checkpoint stores no value for the channel; reading it replays the writes
of its ancestors back to the nearest one holding a value (the seed). LangGraph's default walk
reads every ancestor whole, one round trip each. Here the namespace's checkpoint items are
read newest first from the target (a page at a time, only as far back as the seeds), then the
writes of the chain in one range query, then the seeds' values in one batch.

A checkpoint's history never changes (history(C) = history(parent) + the writes at the
parent), so decoded histories are kept in-process (`delta.HistoryCache`, as the Postgres saver
does): a walk stops at the first ancestor whose history is cached, and a turn reads only its
parent's item and writes. Deleting runs or threads forgets the threads they touched.

Pruning keeps a checkpoint whole without its ancestors by freezing its history into it
(`freeze`): a walk that reaches a checkpoint carrying a frozen history for a channel stops
there, as it would at a seed. That is what lets `prune("keep_latest")` and
`adelete_checkpoints(keep=...)` cut a thread whose transcript is stored as deltas.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from langgraph.checkpoint.base import DeltaChannelHistory

from threadline.checkpointers.delta import HistoryCache, HistoryKey, approx_bytes
from threadline.checkpointers.dynamodb.codec import (
    Codec,
    cid_of,
    parent_of,
    versions_of,
    write_order,
)
from threadline.checkpointers.dynamodb.layout import (
    HIGH,
    Item,
    S,
    blob_sk,
    checkpoint_sk,
    checkpoints_prefix,
    s,
    strings,
    thread_pk,
    typed,
    writes_prefix,
)
from threadline.checkpointers.dynamodb.table import Table
from threadline.checkpointers.places import blob_place
from threadline.checkpointers.serde import loads_at

# Checkpoint items per page of the walk: the first page holds a turn's target and parent.
PAGES = (4, 32)
DELTA_COUNTERS = "counters_since_delta_snapshot"


class SharedHistories:
    """`HistoryCache` for the saver's worker threads (one lock; every call is short)."""

    def __init__(self, max_bytes: int) -> None:
        self._cache = HistoryCache(max_bytes)
        self._lock = threading.Lock()

    def get(self, key: HistoryKey) -> tuple[DeltaChannelHistory, int] | None:
        with self._lock:
            history = self._cache.get(key)
            weight = self._cache.weight_of(key)
        return None if history is None or weight is None else (history, weight)

    def put(self, key: HistoryKey, history: DeltaChannelHistory, weight: int) -> None:
        with self._lock:
            self._cache.put(key, history, weight)

    def forget(self, thread_ids: Sequence[str]) -> None:
        with self._lock:
            for thread_id in thread_ids:
                self._cache.forget_thread(thread_id)


class _Ancestors:
    """A namespace's checkpoint items from the target back, read a page at a time as the
    walk asks for older ones (a parent is always older than its child)."""

    def __init__(self, table: Table, thread: str, ns: str, target: str) -> None:
        self._pages: Iterator[Item] = table.query(
            thread_pk(thread),
            between=(checkpoints_prefix(ns), checkpoint_sk(ns, target)),
            forward=False,
            page_size=PAGES,
        )
        self._seen: dict[str, Item] = {}

    def get(self, cid: str) -> Item | None:
        while cid not in self._seen:
            item = next(self._pages, None)
            if item is None:
                return None
            self._seen[cid_of(item)] = item
        return self._seen[cid]


def delta_history(
    table: Table,
    codec: Codec,
    thread: str,
    ns: str,
    target: str,
    channels: Sequence[str],
    cache: SharedHistories | None = None,
) -> dict[str, DeltaChannelHistory]:
    """`get_delta_channel_history` of checkpoint `target` (same contract)."""
    if not channels:
        return {}
    ancestors = _Ancestors(table, thread, ns, target)
    remaining = list(dict.fromkeys(channels))
    # Where the walk stopped short of a seed: a cached or frozen history, with its weight.
    bases: dict[str, tuple[DeltaChannelHistory, int | None]] = {}
    seeds: dict[str, str] = {}  # channel → version of its seed value
    null_seeds: set[str] = set()
    path: list[tuple[str, set[str]]] = []  # ancestors newest first, with channels open there
    remaining = _stop_at_known(codec, table, cache, (thread, ns, target), remaining, bases, None)
    item = ancestors.get(target) if remaining else None
    if item is not None:
        remaining = _stop_at_known(codec, table, None, (thread, ns, target), remaining, bases, item)
    while item is not None and remaining and (parent := parent_of(item)):
        item = ancestors.get(parent)
        if item is None:
            break
        path.append((parent, set(remaining)))
        versions = versions_of(item)
        stored, nulls = set(strings(item, "has")), set(strings(item, "nulls"))
        for ch in list(remaining):
            if ch in nulls:
                null_seeds.add(ch)
                remaining.remove(ch)
            elif ch in stored and ch in versions:
                seeds[ch] = versions[ch]
                remaining.remove(ch)
        remaining = _stop_at_known(
            codec, table, cache, (thread, ns, parent), remaining, bases, item
        )
    writes = _chain_writes(table, codec, thread, ns, path)
    values = _seed_values(table, codec, thread, ns, seeds)
    result: dict[str, DeltaChannelHistory] = {}
    for ch in channels:
        base, weight = bases.get(ch, ({"writes": []}, None))
        added = [w for cid, _ in reversed(path) for w in writes.get((cid, ch), [])]
        entry: DeltaChannelHistory = {
            "writes": [*base["writes"], *added] if added else base["writes"]
        }
        if ch in null_seeds:
            entry["seed"] = None
        elif ch in values:
            entry["seed"] = values[ch]
        elif "seed" in base:
            entry["seed"] = base["seed"]
        result[ch] = entry
        if cache is not None:  # weighed as the cached base plus what the walk added
            size = (
                approx_bytes(entry) if weight is None else weight + approx_bytes({"writes": added})
            )
            cache.put((thread, ns, target, ch), entry, size)
    return result


def _stop_at_known(
    codec: Codec,
    table: Table,
    cache: SharedHistories | None,
    at: tuple[str, str, str],
    remaining: list[str],
    bases: dict[str, tuple[DeltaChannelHistory, int | None]],
    item: Item | None,
) -> list[str]:
    """The channels still open after checkpoint `at`, whose history is known for those it
    has cached (`cache`) or frozen in it (`item`)."""
    if cache is not None:
        for ch in list(remaining):
            if (found := cache.get((*at, ch))) is not None:
                bases[ch] = found
                remaining = [c for c in remaining if c != ch]
    if item is not None and set(strings(item, "hch")) & set(remaining):
        frozen = codec.frozen(table.whole(item))
        for ch in [c for c in remaining if c in frozen]:
            bases[ch] = (frozen[ch], None)
        remaining = [c for c in remaining if c not in frozen]
    return remaining


def _chain_writes(
    table: Table, codec: Codec, thread: str, ns: str, path: list[tuple[str, set[str]]]
) -> dict[tuple[str, str], list[tuple[str, str, Any]]]:
    """(checkpoint id, channel) → the writes stored there, in replay order."""
    if not path:
        return {}
    open_at = dict(path)
    low, high = writes_prefix(ns, path[-1][0]), writes_prefix(ns, path[0][0]) + HIGH
    found: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in table.query(thread_pk(thread), between=(low, high)):
        if s(item, "kind") != "w":
            continue
        cid, channel = cid_of(item), str(s(item, "channel"))
        if channel in open_at.get(cid, ()):
            found[(cid, channel)].append(item)
    return {
        key: [
            (str(s(w, "task")), key[1], codec.write_value(table.whole(w)))
            for w in sorted(items, key=write_order)
        ]
        for key, items in found.items()
    }


def _seed_values(
    table: Table, codec: Codec, thread: str, ns: str, seeds: Mapping[str, str]
) -> dict[str, Any]:
    if not seeds:
        return {}
    pk = S(thread_pk(thread))
    keys = [{"pk": pk, "sk": S(blob_sk(ns, ch, version))} for ch, version in seeds.items()]
    values: dict[str, Any] = {}
    for blob in table.get_many(keys):
        ch, version = str(s(blob, "channel")), str(s(blob, "version"))
        data = typed(blob, "v")
        if ch in seeds and data is not None and data[0] != "empty":
            values[ch] = loads_at(codec.serde, data, blob_place(thread, ns, ch, version))
    return values


def freeze(table: Table, codec: Codec, item: Item, cache: SharedHistories | None = None) -> Item:
    """`item` made whole on its own: detached from its parent, carrying the history of every
    delta channel it holds no value for (read from its ancestors while they still exist)."""
    thread, ns, cid = str(item["pk"]["S"])[2:], str(s(item, "ns", "")), cid_of(item)
    counters = codec.metadata(item).get(DELTA_COUNTERS) or {}
    stored = set(strings(item, "has")) | set(strings(item, "nulls"))
    channels = [ch for ch in counters if ch not in stored]
    histories = delta_history(table, codec, thread, ns, cid, channels, cache) if channels else {}
    return codec.with_frozen(item, histories)
