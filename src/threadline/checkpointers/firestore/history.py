"""Delta-channel histories: the walk up a checkpoint's parent chain, in few reads.

A `DeltaChannel` checkpoint stores no value for the channel; reading it replays the writes of
its ancestors back to the nearest one holding a value (the seed). LangGraph's default walk
reads every ancestor whole (values and writes), several round trips each. Here the walk
reads only the ancestors' checkpoint documents, then the chain's writes in one id-range
query, then the seeds' values in one batch.

A checkpoint's history never changes (history(C) = history(parent) + the writes at the
parent), so decoded histories are kept in-process (`delta.HistoryCache`, as the Postgres and
DynamoDB savers do): a walk stops at the first ancestor whose history is cached, and a turn
reads only its parent's document and writes. Deleting runs or threads forgets the threads
they touched.

Pruning keeps a checkpoint whole without its ancestors by freezing its history into it
(`freeze`): a walk that reaches a checkpoint carrying a frozen history for a channel stops
there, as it would at a seed. That is what lets `prune("keep_latest")` and
`adelete_checkpoints(keep=...)` cut a thread whose transcript is stored as deltas.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from langgraph.checkpoint.base import DeltaChannelHistory

from threadline.checkpointers.delta import HistoryCache, approx_bytes
from threadline.checkpointers.firestore.codec import Codec, versions_of, write_order
from threadline.checkpointers.firestore.layout import (
    AFTER_SEP,
    BLOBS,
    CHECKPOINTS,
    SEP,
    WRITES,
    Doc,
    blob_id_of,
    checkpoint_id_of,
    thread_doc_id,
)
from threadline.checkpointers.firestore.store import Store

DELTA_COUNTERS = "counters_since_delta_snapshot"


async def delta_history(
    store: Store,
    codec: Codec,
    thread: str,
    ns: str,
    target: str,
    channels: Sequence[str],
    cache: HistoryCache | None = None,
) -> dict[str, DeltaChannelHistory]:
    """`get_delta_channel_history` of checkpoint `target` (same contract)."""
    if not channels:
        return {}
    tdoc = thread_doc_id(thread)
    checkpoints = store.sub(tdoc, CHECKPOINTS)
    remaining = list(dict.fromkeys(channels))
    # Where the walk stopped short of a seed: a cached or frozen history (with its weight).
    bases: dict[str, DeltaChannelHistory] = {}
    weights: dict[str, int] = {}
    seeds: dict[str, str] = {}  # channel → version of its seed value
    null_seeds: set[str] = set()
    path: list[tuple[str, set[str]]] = []  # ancestors newest first, with channels open there
    remaining = _stop_at_cached(cache, (thread, ns, target), remaining, bases, weights)
    doc = await store.get(checkpoints.document(checkpoint_id_of(ns, target))) if remaining else None
    if doc is not None:
        remaining = await _stop_at_frozen(store, codec, thread, doc, remaining, bases)
    while doc is not None and remaining and (parent := doc.get("parent")):
        doc = await store.get(checkpoints.document(checkpoint_id_of(ns, parent)))
        if doc is None:
            break
        path.append((parent, set(remaining)))
        versions = versions_of(doc)
        for ch in list(remaining):
            if ch in doc.get("nulls", []):
                null_seeds.add(ch)
                remaining.remove(ch)
            elif ch in doc.get("has", []) and ch in versions:
                seeds[ch] = versions[ch]
                remaining.remove(ch)
        remaining = _stop_at_cached(cache, (thread, ns, parent), remaining, bases, weights)
        remaining = await _stop_at_frozen(store, codec, thread, doc, remaining, bases)
    writes = await _chain_writes(store, codec, thread, ns, path)
    values = await _seed_values(store, codec, thread, ns, seeds)
    result: dict[str, DeltaChannelHistory] = {}
    for ch in channels:
        base = bases.get(ch, {"writes": []})
        added = [w for cid, _ in reversed(path) for w in writes.get((cid, ch), [])]
        entry: DeltaChannelHistory = {"writes": [*base["writes"], *added]}
        if ch in null_seeds:
            entry["seed"] = None
        elif ch in values:
            entry["seed"] = values[ch]
        elif "seed" in base:
            entry["seed"] = base["seed"]
        result[ch] = entry
        if cache is not None:  # weighed as the cached base plus what the walk added
            weight = weights.get(ch)
            added_bytes = approx_bytes({"writes": added})
            cache.put(
                (thread, ns, target, ch),
                entry,
                approx_bytes(entry) if weight is None else weight + added_bytes,
            )
    return result


def _stop_at_cached(
    cache: HistoryCache | None,
    at: tuple[str, str, str],
    remaining: list[str],
    bases: dict[str, DeltaChannelHistory],
    weights: dict[str, int],
) -> list[str]:
    """The channels still open after checkpoint `at`, whose history is cached for the rest."""
    if cache is None:
        return remaining
    for ch in list(remaining):
        if (found := cache.get((*at, ch))) is not None:
            bases[ch] = found
            if (weight := cache.weight_of((*at, ch))) is not None:
                weights[ch] = weight
            remaining = [c for c in remaining if c != ch]
    return remaining


async def _stop_at_frozen(
    store: Store,
    codec: Codec,
    thread: str,
    doc: Doc,
    remaining: list[str],
    bases: dict[str, DeltaChannelHistory],
) -> list[str]:
    """The channels still open after checkpoint `doc`, whose history is known for those it
    holds frozen."""
    if not set(doc.get("hch", [])) & set(remaining):
        return remaining
    (whole,) = await store.whole(thread_doc_id(thread), CHECKPOINTS, [(doc["key"], doc)])
    frozen = codec.frozen(thread, whole)
    for ch in [c for c in remaining if c in frozen]:
        bases[ch] = frozen[ch]
    return [c for c in remaining if c not in frozen]


async def _chain_writes(
    store: Store, codec: Codec, thread: str, ns: str, path: list[tuple[str, set[str]]]
) -> dict[tuple[str, str], list[tuple[str, str, Any]]]:
    """(checkpoint id, channel) → the writes stored there, in replay order."""
    if not path:
        return {}
    open_at = dict(path)
    tdoc = thread_doc_id(thread)
    low = checkpoint_id_of(ns, path[-1][0]) + SEP
    high = checkpoint_id_of(ns, path[0][0]) + AFTER_SEP
    found = [
        (i, d)
        for i, d in await store.in_range(store.sub(tdoc, WRITES), (low, high))
        if d["ns"] == ns and d["ch"] in open_at.get(d["cid"], ())
    ]
    by_key: dict[tuple[str, str], list[Doc]] = defaultdict(list)
    for doc in await store.whole(tdoc, WRITES, found):
        by_key[(doc["cid"], doc["ch"])].append(doc)
    return {
        key: [
            (str(w["task"]), key[1], codec.write_value(thread, w))
            for w in sorted(docs, key=write_order)
        ]
        for key, docs in by_key.items()
    }


async def _seed_values(
    store: Store, codec: Codec, thread: str, ns: str, seeds: dict[str, str]
) -> dict[str, Any]:
    if not seeds:
        return {}
    tdoc = thread_doc_id(thread)
    blobs = store.sub(tdoc, BLOBS)
    found = await store.get_many([blobs.document(blob_id_of(ns, ch, v)) for ch, v in seeds.items()])
    docs = await store.whole(tdoc, BLOBS, list(found.items()))
    return {d["ch"]: codec.blob_value(thread, d) for d in docs if seeds.get(d["ch"]) == d["ver"]}


async def freeze(store: Store, codec: Codec, thread: str, doc: Doc) -> Doc:
    """`doc` (whole) made whole on its own: detached from its parent, carrying the history of
    every delta channel it holds no value for (read from its ancestors while they exist)."""
    counters = codec.metadata(thread, doc).get(DELTA_COUNTERS) or {}
    stored = set(doc.get("has", [])) | set(doc.get("nulls", []))
    channels = [ch for ch in counters if ch not in stored]
    histories = (
        await delta_history(store, codec, thread, doc["ns"], doc["cid"], channels)
        if channels
        else {}
    )
    return codec.with_frozen(thread, doc, histories)
