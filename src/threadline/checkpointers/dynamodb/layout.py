"""How a thread lies in one DynamoDB table: keys, attribute values, and chunks.

Every item of a thread shares one partition (`t#<thread_id>`); its sort key names the kind
of item and its place, as a JSON array so that no thread, namespace, channel or task name
can collide with another or leak into a neighbour's key prefix:

- `c["ns","id"]`        a checkpoint (skeleton, sealed metadata, channels holding a value)
- `b["ns","ch","ver"]`  a channel value, once per version
- `w["ns","id","task",idx]` a pending write
- `r["name"]`           a turn receipt
- `record`              the thread record
- `k<owner sk>#<attr>#<digest>#<n>` a chunk of an owner's value too large for one item

A checkpoint's ids sort by time, so `c["ns",` read backwards is the namespace newest first.
Thread records are also copied under `r#<tenant>` (sort key: the thread key), written in the
same transaction as the canonical one, so a tenant's threads are one Query.

DynamoDB refuses items over 400 KB. A value whose item would pass `ITEM_BUDGET` moves into
chunk items keyed by its owner, attribute and content digest: a rewrite with other content
never touches the chunks a reader of the old owner item may be reading. Chunks and new
channel values written ahead of a transaction that then fails (see `Table.commit`) are
referenced by nothing; they go with the thread, or with `prune(strategy="delete")`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Item = dict[str, Any]  # a low-level DynamoDB item: attribute name → {"S": ...} etc.

ITEM_BUDGET = 350 * 1024  # below DynamoDB's 400 KB, with room for names and key overhead
CHUNK_BYTES = 300 * 1024
# A TransactWriteItems takes at most 100 actions and 4 MB; stay below with room.
TX_MAX_ITEMS = 100
TX_BUDGET = 3_500_000
HIGH = "\x7f"  # above every character of a JSON-encoded (ASCII) key part

CHECKPOINT, BLOB, WRITE, RECEIPT, RECORD, CHUNK = "c", "b", "w", "r", "record", "k"
LISTED_RECORD = "listed"  # a record's copy in its tenant's partition
RECORD_SK = "record"
CHUNKS = "chunks"  # attribute: {attr: {"n": count, "h": digest}} of an owner's chunked values


def thread_pk(thread_id: str) -> str:
    return f"t#{thread_id}"


def tenant_pk(tenant: str) -> str:
    """The partition of a tenant's record copies (listings)."""
    return f"r#{tenant}"


def _key(kind: str, *parts: str | int) -> str:
    return kind + json.dumps(list(parts), separators=(",", ":"))


def _prefix(kind: str, *parts: str | int) -> str:
    """The sort-key prefix shared by every key of `kind` starting with `parts`."""
    return _key(kind, *parts)[:-1] + ","


def checkpoint_sk(ns: str, checkpoint_id: str) -> str:
    return _key(CHECKPOINT, ns, checkpoint_id)


def checkpoints_prefix(ns: str | None = None) -> str:
    return CHECKPOINT + "[" if ns is None else _prefix(CHECKPOINT, ns)


def blob_sk(ns: str, channel: str, version: str) -> str:
    return _key(BLOB, ns, channel, str(version))


def blobs_prefix(ns: str) -> str:
    return _prefix(BLOB, ns)


def blob_version(sk: str) -> tuple[str, str]:
    """(channel, version) of a channel value's sort key."""
    _, channel, version = json.loads(sk[len(BLOB) :])
    return str(channel), str(version)


def write_sk(ns: str, checkpoint_id: str, task_id: str, idx: int) -> str:
    return _key(WRITE, ns, checkpoint_id, task_id, int(idx))


def writes_prefix(ns: str, checkpoint_id: str | None = None) -> str:
    """The writes of one checkpoint, or of a whole namespace."""
    return _prefix(WRITE, ns) if checkpoint_id is None else _prefix(WRITE, ns, checkpoint_id)


def receipt_sk(name: str) -> str:
    return _key(RECEIPT, name)


def chunk_prefix(owner_sk: str, attr: str | None = None, digest: str | None = None) -> str:
    base = f"{CHUNK}{owner_sk}#"
    if attr is None:
        return base
    return f"{base}{attr}#{digest}#" if digest else f"{base}{attr}#"


# ------------------------------------------------------------------ attribute values


def S(value: str) -> dict[str, str]:
    return {"S": value}


def N(value: float | int) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def B(value: bytes) -> dict[str, bytes]:
    return {"B": bytes(value)}


def L(values: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    return {"L": [S(v) for v in values]}


def NULL() -> dict[str, bool]:
    return {"NULL": True}


def s(item: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = item.get(name)
    return default if value is None or "NULL" in value else str(value["S"])


def n(item: Mapping[str, Any], name: str) -> float | None:
    value = item.get(name)
    return None if value is None or "NULL" in value else float(value["N"])


def strings(item: Mapping[str, Any], name: str) -> list[str]:
    return [v["S"] for v in item.get(name, {}).get("L", [])]


def typed(item: Mapping[str, Any], attr: str) -> tuple[str, bytes] | None:
    """A serialised value stored as `<attr>t` (type) and `<attr>` (bytes)."""
    if f"{attr}t" not in item or attr not in item:
        return None
    return str(item[f"{attr}t"]["S"]), bytes(item[attr]["B"])


def put_typed(item: Item, attr: str, value: tuple[str, bytes | None]) -> Item:
    item[f"{attr}t"] = S(value[0])
    item[attr] = B(value[1] or b"")
    return item


def _size(value: Mapping[str, Any]) -> int:
    (kind, inner), *_ = value.items()
    if kind in ("S",):
        return len(inner.encode())
    if kind == "B":
        return len(inner)
    if kind == "N":
        return len(inner) // 2 + 2
    if kind == "L":
        return 3 + sum(_size(v) + 1 for v in inner)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _size(v) + 1 for k, v in inner.items())
    return 1


def item_size(item: Mapping[str, Any]) -> int:
    """DynamoDB's item size (attribute names plus values), rounded up a little."""
    return sum(len(name.encode()) + _size(value) for name, value in item.items()) + 100


# ------------------------------------------------------------------ chunks


@dataclass
class Fitted:
    """An item small enough for DynamoDB, and the chunk items its large values moved to."""

    item: Item
    chunks: list[Item] = field(default_factory=list)


def fit(item: Item, payload: Iterable[str]) -> Fitted:
    """Move the largest of the `payload` (binary) attributes into chunk items until `item`
    fits; each chunk is keyed by the owner, the attribute and the value's digest."""
    fitted = Fitted(dict(item))
    candidates = [a for a in payload if a in item and "B" in item[a]]
    while item_size(fitted.item) > ITEM_BUDGET and candidates:
        attr = max(candidates, key=lambda a: len(fitted.item[a]["B"]))
        candidates.remove(attr)
        data = bytes(fitted.item.pop(attr)["B"])
        digest = hashlib.sha256(data).hexdigest()[:32]
        pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        prefix = chunk_prefix(item["sk"]["S"], attr, digest)
        fitted.chunks.extend(
            {"pk": item["pk"], "sk": S(f"{prefix}{i:05d}"), "kind": S(CHUNK), "d": B(piece)}
            for i, piece in enumerate(pieces)
        )
        refs = dict(fitted.item.get(CHUNKS, {}).get("M", {}))
        refs[attr] = {"M": {"n": N(len(pieces)), "h": S(digest)}}
        fitted.item[CHUNKS] = {"M": refs}
    if item_size(fitted.item) > ITEM_BUDGET:
        raise ValueError(f"item {item['sk']['S']!r} is too large for DynamoDB even chunked")
    return fitted


def chunk_refs(item: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """attr → (chunk count, digest) of an owner's chunked values."""
    refs = item.get(CHUNKS, {}).get("M", {})
    return {a: (int(r["M"]["n"]["N"]), r["M"]["h"]["S"]) for a, r in refs.items()}


def joined(item: Item, attr: str, chunks: list[Item]) -> Item:
    """`item` with its chunked `attr` put back together from `chunks` (in key order)."""
    count, digest = chunk_refs(item)[attr]
    data = b"".join(bytes(c["d"]["B"]) for c in sorted(chunks, key=lambda c: c["sk"]["S"]))
    if len(chunks) != count or hashlib.sha256(data).hexdigest()[:32] != digest:
        raise ValueError(f"chunks of {item['sk']['S']!r} are missing or altered")
    whole = {k: v for k, v in item.items() if k != CHUNKS}
    whole[attr] = B(data)
    if rest := {a: r for a, r in item[CHUNKS]["M"].items() if a != attr}:
        whole[CHUNKS] = {"M": rest}
    return whole


def key_of(item: Mapping[str, Any]) -> Item:
    return {"pk": item["pk"], "sk": item["sk"]}
