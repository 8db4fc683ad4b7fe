"""Checkpoints, channel values and pending writes as Firestore documents, each value
serialised once and bound to its place (`places`) as the Postgres saver's rows are: with
encryption on, metadata, channel values, writes and frozen histories are ciphertext that
decrypts nowhere else.

What stays readable is what locates and links documents: ids, namespaces, channel names and
versions, task ids, and the run id (a keyed MAC of it with encryption on, see
`ValueSealer.run_id_keys`) that `delete_for_runs` queries.
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

from threadline.checkpointers.firestore.layout import (
    BLOBS,
    CHECKPOINTS,
    Doc,
    blob_id_of,
    checkpoint_id_of,
    write_id_of,
)
from threadline.checkpointers.places import Place, blob_place, checkpoint_place, write_place
from threadline.checkpointers.rows import checkpoint_config
from threadline.checkpointers.serde import ValueSealer, dumps_at, loads_at, rebound

# Bytes fields a document may chunk: `m` sealed metadata and `h` a frozen delta history (see
# `history.freeze`) of a checkpoint; `v` the value of a channel version or a write. Each has
# its type tag in `<field>t`.
PAYLOAD = ("m", "h", "v")


def skeleton_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    return dict(json.loads(doc["cp"]))


def versions_of(doc: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in skeleton_of(doc)["channel_versions"].items()}


def typed(doc: Mapping[str, Any], name: str) -> tuple[str, bytes] | None:
    if f"{name}t" not in doc or name not in doc:
        return None
    return str(doc[f"{name}t"]), bytes(doc[name])


def put_typed(doc: Doc, name: str, value: tuple[str, bytes | None]) -> Doc:
    doc[f"{name}t"] = value[0]
    doc[name] = value[1] or b""
    return doc


def write_order(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    return writes_sort_key(str(doc.get("path", "")), str(doc["task"]), int(doc["idx"]))


class Codec:
    """Serialisation between LangGraph's objects and documents, each value at its place."""

    def __init__(self, serde: SerializerProtocol) -> None:
        self.serde = serde
        self.sealer = ValueSealer(serde)

    def checkpoint_docs(
        self,
        thread_id: str,
        ns: str,
        parent_id: str | None,
        checkpoint: Checkpoint,
        metadata: Mapping[str, Any],
        new_versions: Mapping[str, Any],
    ) -> tuple[tuple[str, Doc], list[tuple[str, Doc]]]:
        """(id, document) of the checkpoint, and of its new channel values."""
        cid = checkpoint["id"]
        values = checkpoint["channel_values"]
        key = checkpoint_id_of(ns, cid)
        doc: Doc = {
            "thread": thread_id,
            "ns": ns,
            "cid": cid,
            "key": key,
            "parent": parent_id or None,
            "cp": json.dumps({**checkpoint, "channel_values": {}}, separators=(",", ":")),
            "has": [k for k, v in values.items() if v is not None],
            "nulls": [k for k, v in values.items() if v is None],
        }
        place = checkpoint_place("metadata", thread_id, ns, cid)
        put_typed(doc, "m", dumps_at(self.serde, dict(metadata), place))
        if (run_id := metadata.get("run_id")) is not None and (
            keys := self.sealer.run_id_keys([str(run_id)])
        ):
            doc["run"] = keys[0]
        blobs = [
            (
                blob_id_of(ns, ch, str(version)),
                put_typed(
                    {"ns": ns, "ch": ch, "ver": str(version)},
                    "v",
                    dumps_at(self.serde, values[ch], blob_place(thread_id, ns, ch, str(version))),
                ),
            )
            for ch, version in new_versions.items()
            if ch in values and values[ch] is not None
        ]
        return (key, doc), blobs

    def blob_ids(self, doc: Mapping[str, Any]) -> list[str]:
        """Ids of the channel values a checkpoint reads."""
        versions = versions_of(doc)
        return [blob_id_of(doc["ns"], ch, versions[ch]) for ch in doc["has"] if ch in versions]

    def metadata(self, thread_id: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        data = typed(doc, "m")
        place = checkpoint_place("metadata", thread_id, doc["ns"], doc["cid"])
        return dict(loads_at(self.serde, data, place)) if data else {}

    def blob_value(self, thread_id: str, doc: Mapping[str, Any]) -> Any:
        data = typed(doc, "v")
        assert data is not None
        return loads_at(self.serde, data, blob_place(thread_id, doc["ns"], doc["ch"], doc["ver"]))

    def checkpoint_tuple(
        self,
        thread_id: str,
        doc: Mapping[str, Any],
        blobs: Iterable[Mapping[str, Any]],
        writes: Iterable[Mapping[str, Any]],
    ) -> CheckpointTuple:
        ns, cid = doc["ns"], doc["cid"]
        values: dict[str, Any] = {ch: None for ch in doc.get("nulls", [])}
        for blob in blobs:
            if blob.get("vt") != "empty":
                values[blob["ch"]] = self.blob_value(thread_id, blob)
        parent = doc.get("parent")
        return CheckpointTuple(
            config=checkpoint_config(thread_id, ns, cid),
            checkpoint={**skeleton_of(doc), "channel_values": values},  # type: ignore[typeddict-item]
            metadata=self.metadata(thread_id, doc),  # type: ignore[arg-type]
            parent_config=checkpoint_config(thread_id, ns, parent) if parent else None,
            pending_writes=[
                (str(w["task"]), str(w["ch"]), self.write_value(thread_id, w))
                for w in sorted(writes, key=write_order)
            ],
        )

    def write_docs(
        self,
        thread_id: str,
        ns: str,
        cid: str,
        task_id: str,
        task_path: str,
        writes: Sequence[tuple[str, Any]],
    ) -> list[tuple[str, Doc]]:
        docs = []
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            place = write_place(thread_id, ns, cid, task_id, idx, channel)
            doc: Doc = {
                "ns": ns,
                "cid": cid,
                "task": task_id,
                "path": task_path,
                "idx": idx,
                "ch": channel,
            }
            docs.append(
                (
                    write_id_of(ns, cid, task_id, idx),
                    put_typed(doc, "v", dumps_at(self.serde, value, place)),
                )
            )
        return docs

    def write_value(self, thread_id: str, doc: Mapping[str, Any]) -> Any:
        data = typed(doc, "v")
        assert data is not None
        place = write_place(
            thread_id, doc["ns"], doc["cid"], doc["task"], int(doc["idx"]), doc["ch"]
        )
        return loads_at(self.serde, data, place)

    # ---------------------------------------------------------------- history

    def frozen(self, thread_id: str, doc: Mapping[str, Any]) -> dict[str, DeltaChannelHistory]:
        """The delta histories a pruned checkpoint carries in place of its ancestors."""
        data = typed(doc, "h")
        if data is None:
            return {}
        place = checkpoint_place("history", thread_id, doc["ns"], doc["cid"])
        stored = loads_at(self.serde, data, place)
        histories: dict[str, DeltaChannelHistory] = {}
        for ch, entry in stored.items():
            history: DeltaChannelHistory = {
                "writes": [(str(task), ch, value) for task, value in entry["writes"]]
            }
            if "seed" in entry:
                history["seed"] = entry["seed"]
            histories[ch] = history
        return histories

    def with_frozen(
        self, thread_id: str, doc: Doc, histories: Mapping[str, DeltaChannelHistory]
    ) -> Doc:
        """`doc` carrying `histories`, detached from its parent."""
        stored = {
            ch: {
                "writes": [[task, value] for task, _, value in h["writes"]],
                **({"seed": h["seed"]} if "seed" in h else {}),
            }
            for ch, h in histories.items()
        }
        frozen = {k: v for k, v in doc.items() if k not in ("h", "ht", "hch")}
        frozen["parent"] = None
        if stored:
            place = checkpoint_place("history", thread_id, doc["ns"], doc["cid"])
            put_typed(frozen, "h", dumps_at(self.serde, stored, place))
            frozen["hch"] = sorted(stored)
        return frozen

    # ------------------------------------------------------------------ places

    def place(self, kind: str, thread_id: str, doc: Mapping[str, Any], name: str) -> Place:
        """Where the value in field `name` of a `kind` document of `thread_id` belongs."""
        if kind == CHECKPOINTS:
            part = "metadata" if name == "m" else "history"
            return checkpoint_place(part, thread_id, doc["ns"], doc["cid"])
        if kind == BLOBS:
            return blob_place(thread_id, doc["ns"], doc["ch"], doc["ver"])
        return write_place(
            thread_id, doc["ns"], doc["cid"], doc["task"], int(doc["idx"]), doc["ch"]
        )

    def moved(self, kind: str, doc: Doc, source: str, target: str) -> Doc:
        """A whole document of thread `source` as one of `target`: its values re-bound to
        their new place at the cipher level (never deserialised)."""
        copy = dict(doc)
        if kind == CHECKPOINTS:
            copy["thread"] = target
        for name in PAYLOAD:
            if (data := typed(doc, name)) is not None:
                old = self.place(kind, source, doc, name)
                new = self.place(kind, target, doc, name)
                put_typed(copy, name, rebound(self.serde, data, old, new))
        return copy
