"""Checkpoints, channel values and pending writes as DynamoDB items, serialised once each
and bound to their place (`places`) like the Postgres saver's rows: with encryption on, the
metadata and every value are ciphertext that decrypts nowhere else.

What stays readable is what locates and links items: ids, namespaces, channel names and
versions, task ids, and a keyed MAC of the run id (`ValueSealer.run_id_keys`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    Checkpoint,
    CheckpointTuple,
    DeltaChannelHistory,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from threadline.checkpointers.dynamodb.layout import (
    BLOB,
    CHECKPOINT,
    WRITE,
    Item,
    L,
    N,
    S,
    blob_sk,
    checkpoint_sk,
    n,
    put_typed,
    s,
    strings,
    thread_pk,
    typed,
    write_sk,
)
from threadline.checkpointers.places import (
    Place,
    blob_place,
    checkpoint_place,
    write_place,
)
from threadline.checkpointers.rows import checkpoint_config
from threadline.checkpointers.serde import ValueSealer, dumps_at, loads_at, rebound

# Checkpoint item attributes: `m` sealed metadata, `h` a frozen delta history (see
# `history.freeze`), `has` channels with a stored value, `nulls` channels whose value is None,
# `hch` channels `h` holds. Channel values (`b` items) and writes (`w` items) keep theirs in `v`.
PAYLOAD = ("m", "h", "v")


def thread_of(item: Mapping[str, Any]) -> str:
    return str(item["pk"]["S"])[2:]


def ns_of(item: Mapping[str, Any]) -> str:
    return str(s(item, "ns", ""))


def cid_of(item: Mapping[str, Any]) -> str:
    return str(s(item, "cid"))


def parent_of(item: Mapping[str, Any]) -> str | None:
    return s(item, "parent")


def skeleton_of(item: Mapping[str, Any]) -> dict[str, Any]:
    return dict(json.loads(str(s(item, "cp"))))


def versions_of(item: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in skeleton_of(item)["channel_versions"].items()}


def has_value(item: Mapping[str, Any]) -> set[str]:
    """Channels holding a value at this checkpoint (a delta history's seed)."""
    return {*strings(item, "has"), *strings(item, "nulls")}


def blob_keys(item: Mapping[str, Any]) -> list[Item]:
    """Keys of the channel values a checkpoint reads."""
    versions = versions_of(item)
    pk, ns = item["pk"], ns_of(item)
    return [
        {"pk": pk, "sk": S(blob_sk(ns, ch, versions[ch]))}
        for ch in strings(item, "has")
        if ch in versions
    ]


class Codec:
    """Serialisation between LangGraph's objects and items, each value at its place."""

    def __init__(self, serde: SerializerProtocol) -> None:
        self.serde = serde
        self.sealer = ValueSealer(serde)

    # ------------------------------------------------------------ checkpoints

    def checkpoint_items(
        self,
        thread_id: str,
        ns: str,
        parent_id: str | None,
        checkpoint: Checkpoint,
        metadata: Mapping[str, Any],
        new_versions: Mapping[str, Any],
    ) -> tuple[Item, list[Item]]:
        """The checkpoint item and the items of its new channel values."""
        cid = checkpoint["id"]
        values = checkpoint["channel_values"]
        nulls = [k for k, v in values.items() if v is None]
        stored = [k for k, v in values.items() if v is not None]
        item: Item = {
            "pk": S(thread_pk(thread_id)),
            "sk": S(checkpoint_sk(ns, cid)),
            "kind": S(CHECKPOINT),
            "ns": S(ns),
            "cid": S(cid),
            "cp": S(json.dumps({**checkpoint, "channel_values": {}}, separators=(",", ":"))),
            "has": L(stored),
            "nulls": L(nulls),
        }
        if parent_id:
            item["parent"] = S(parent_id)
        place = checkpoint_place("metadata", thread_id, ns, cid)
        put_typed(item, "m", dumps_at(self.serde, dict(metadata), place))
        if (run_id := metadata.get("run_id")) is not None:
            keys = self.sealer.run_id_keys([str(run_id)])
            if keys:
                item["run"] = S(keys[0])
        blobs = [
            put_typed(
                {
                    "pk": item["pk"],
                    "sk": S(blob_sk(ns, ch, str(version))),
                    "kind": S(BLOB),
                    "ns": S(ns),
                    "channel": S(ch),
                    "version": S(str(version)),
                },
                "v",
                dumps_at(self.serde, values[ch], blob_place(thread_id, ns, ch, str(version))),
            )
            for ch, version in new_versions.items()
            if ch in stored
        ]
        return item, blobs

    def metadata(self, item: Mapping[str, Any]) -> dict[str, Any]:
        place = checkpoint_place("metadata", thread_of(item), ns_of(item), cid_of(item))
        data = typed(item, "m")
        return dict(loads_at(self.serde, data, place)) if data else {}

    def checkpoint_tuple(
        self, item: Mapping[str, Any], blobs: Iterable[Item], writes: Iterable[Item]
    ) -> CheckpointTuple:
        thread, ns, cid = thread_of(item), ns_of(item), cid_of(item)
        skeleton = skeleton_of(item)
        values: dict[str, Any] = {ch: None for ch in strings(item, "nulls")}
        for blob in blobs:
            ch, version = str(s(blob, "channel")), str(s(blob, "version"))
            data = typed(blob, "v")
            if data is not None and data[0] != "empty":
                values[ch] = loads_at(self.serde, data, blob_place(thread, ns, ch, version))
        parent = parent_of(item)
        return CheckpointTuple(
            config=checkpoint_config(thread, ns, cid),
            checkpoint={**skeleton, "channel_values": values},  # type: ignore[typeddict-item]
            metadata=self.metadata(item),  # type: ignore[arg-type]
            parent_config=checkpoint_config(thread, ns, parent) if parent else None,
            pending_writes=[
                (str(s(w, "task")), str(s(w, "channel")), self.write_value(w))
                for w in sorted(writes, key=write_order)
            ],
        )

    # ----------------------------------------------------------------- writes

    def write_items(
        self,
        thread_id: str,
        ns: str,
        cid: str,
        task_id: str,
        task_path: str,
        writes: Sequence[tuple[str, Any]],
    ) -> list[Item]:
        items = []
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            place = write_place(thread_id, ns, cid, task_id, idx, channel)
            item: Item = {
                "pk": S(thread_pk(thread_id)),
                "sk": S(write_sk(ns, cid, task_id, idx)),
                "kind": S(WRITE),
                "ns": S(ns),
                "cid": S(cid),
                "task": S(task_id),
                "path": S(task_path),
                "idx": N(idx),
                "channel": S(channel),
            }
            items.append(put_typed(item, "v", dumps_at(self.serde, value, place)))
        return items

    def write_value(self, item: Mapping[str, Any]) -> Any:
        data = typed(item, "v")
        assert data is not None
        return loads_at(self.serde, data, self.place(item, "v"))

    # ---------------------------------------------------------------- history

    def frozen(self, item: Mapping[str, Any]) -> dict[str, DeltaChannelHistory]:
        """The delta histories a pruned checkpoint carries in place of its ancestors."""
        data = typed(item, "h")
        if data is None:
            return {}
        stored = loads_at(self.serde, data, self.place(item, "h"))
        histories: dict[str, DeltaChannelHistory] = {}
        for ch, entry in stored.items():
            history: DeltaChannelHistory = {
                "writes": [(str(task), ch, value) for task, value in entry["writes"]]
            }
            if "seed" in entry:
                history["seed"] = entry["seed"]
            histories[ch] = history
        return histories

    def with_frozen(self, item: Item, histories: Mapping[str, DeltaChannelHistory]) -> Item:
        """`item` carrying `histories`, detached from its parent."""
        stored = {
            ch: {
                "writes": [[task, value] for task, _, value in h["writes"]],
                **({"seed": h["seed"]} if "seed" in h else {}),
            }
            for ch, h in histories.items()
        }
        frozen = {k: v for k, v in item.items() if k not in ("parent", "h", "ht", "hch")}
        if stored:
            put_typed(frozen, "h", dumps_at(self.serde, stored, self.place(item, "h")))
            frozen["hch"] = L(sorted(stored))
        return frozen

    # ------------------------------------------------------------------ places

    def place(self, item: Mapping[str, Any], attr: str, thread: str | None = None) -> Place:
        """Where the value in `attr` of `item` belongs (of `thread`, if given)."""
        thread = thread if thread is not None else thread_of(item)
        kind, ns = str(s(item, "kind")), ns_of(item)
        if kind == CHECKPOINT:
            return checkpoint_place(
                "metadata" if attr == "m" else "history", thread, ns, cid_of(item)
            )
        if kind == BLOB:
            return blob_place(thread, ns, str(s(item, "channel")), str(s(item, "version")))
        idx = int(n(item, "idx") or 0)
        return write_place(
            thread, ns, cid_of(item), str(s(item, "task")), idx, str(s(item, "channel"))
        )

    def moved(self, item: Item, target: str) -> Item:
        """A whole item of one thread as an item of thread `target`: its values re-bound
        to their new place at the cipher level (never deserialised)."""
        copy = {**item, "pk": S(thread_pk(target))}
        for attr in PAYLOAD:
            if (data := typed(item, attr)) is not None:
                old, new = self.place(item, attr), self.place(item, attr, target)
                put_typed(copy, attr, rebound(self.serde, data, old, new))
        return copy


def write_order(item: Mapping[str, Any]) -> tuple[Any, ...]:
    return writes_sort_key(str(s(item, "path", "")), str(s(item, "task")), int(n(item, "idx") or 0))
