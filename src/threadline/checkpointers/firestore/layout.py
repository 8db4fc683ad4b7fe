"""How a thread lies in Firestore: collections, document ids, and chunks.

With collection prefix `P`, a thread is one document of `P_threads` (its id a reversible
escaping of the storage thread key; it holds the thread record, if any) and these
subcollections of it, every document id built from escaped parts joined by `!`:

- `P_checkpoints/<ns>!<id>`            a checkpoint (skeleton, sealed metadata, frozen history)
- `P_blobs/<ns>!<channel>!<version>`   a channel value, once per version
- `P_writes/<ns>!<id>!<task>!<idx>`    a pending write
- `P_receipts/<name>`                  a turn receipt
- `P_chunks/<kind>!<owner id>!<field>!<digest>!<n>`  a piece of a value too large for a document

Parts are percent-escaped (`quote(part, safe="")`), which never yields `!` and only yields
characters above `"`: no thread, namespace, channel or task name can collide with another or
reach into a neighbour's id range (`<prefix>!` up to `<prefix>"` is exactly one prefix).
Checkpoints also carry their id as the field `key`: Firestore scans document ids in
ascending order only, and a single-field index on `key` orders a namespace newest first
without a composite index.

Firestore refuses documents over 1 MiB and commits over 500 writes or 10 MiB (4 MiB in the
emulator). A document
whose payload passes `DOC_BUDGET` moves its largest bytes fields into chunk documents keyed
by owner, field and content digest, so a rewrite with other content never touches the
chunks a reader of the old owner may be reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

SEP = "!"
AFTER_SEP = '"'  # the character after `SEP`: `<prefix>!` ≤ id < `<prefix>"` is one prefix
DOC_BUDGET = 900_000  # below Firestore's 1 MiB document limit, with room for names
CHUNK_BYTES = 900_000
MAX_WRITES = 500  # per commit
COMMIT_BUDGET = 3_500_000  # bytes per commit: the 10 MiB API limit, 4 MiB in the emulator

# Collections (under the thread document) by kind of owner, for chunk ids.
CHECKPOINTS, BLOBS, WRITES, RECEIPTS, CHUNKS = (
    "checkpoints",
    "blobs",
    "writes",
    "receipts",
    "chunks",
)
CHUNK_REFS = "chunks"  # field: {field: {"n": count, "h": digest}} of an owner's chunked values
OWNER_TAGS = {CHECKPOINTS: "c", BLOBS: "b", WRITES: "w"}

Doc = dict[str, Any]


def enc(part: str | int) -> str:
    return quote(str(part), safe="")


def dec(part: str) -> str:
    return unquote(part)


def doc_id(*parts: str | int) -> str:
    return SEP.join(enc(p) for p in parts)


def prefix_range(*parts: str | int) -> tuple[str, str]:
    """[low, high) of the ids that start with `parts` (and have more)."""
    base = doc_id(*parts)
    return base + SEP, base + AFTER_SEP


def thread_doc_id(thread_key: str) -> str:
    """`t!<escaped key>`: never `.`, `..` or `__x__`, which Firestore reserves."""
    return "t" + SEP + enc(thread_key)


def checkpoint_id_of(ns: str, checkpoint_id: str) -> str:
    return doc_id(ns, checkpoint_id)


def blob_id_of(ns: str, channel: str, version: str) -> str:
    return doc_id(ns, channel, str(version))


def write_id_of(ns: str, checkpoint_id: str, task_id: str, idx: int) -> str:
    return doc_id(ns, checkpoint_id, task_id, int(idx))


def chunk_owner(kind: str, owner_id: str) -> str:
    return f"{OWNER_TAGS[kind]}{SEP}{owner_id}"


def chunk_ids(kind: str, owner_id: str, name: str, count: int, digest: str) -> list[str]:
    base = f"{chunk_owner(kind, owner_id)}{SEP}{name}{SEP}{digest}{SEP}"
    return [f"{base}{i:05d}" for i in range(count)]


def owner_of_chunk(chunk_id: str) -> str:
    """`<tag>!<owner id>` of a chunk document id."""
    return chunk_id.rsplit(SEP, 3)[0]


def value_size(value: Any) -> int:
    """Firestore's size of a field value (roughly, rounded up)."""
    if isinstance(value, bytes | str):
        return len(value.encode() if isinstance(value, str) else value) + 1
    if isinstance(value, Mapping):
        return 32 + sum(len(str(k)) + 1 + value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 32 + sum(value_size(v) for v in value)
    return 8


def doc_size(doc: Mapping[str, Any]) -> int:
    return value_size(doc) + 200  # with the document's name


@dataclass
class Fitted:
    """A document small enough for Firestore, and the chunk documents its large values
    moved to (id → data)."""

    doc: Doc
    chunks: dict[str, Doc] = field(default_factory=dict)


def fit(kind: str, owner_id: str, doc: Doc, payload: Iterable[str]) -> Fitted:
    """Move the largest of the `payload` bytes fields into chunks until `doc` fits."""
    fitted = Fitted(dict(doc))
    candidates = [f for f in payload if isinstance(doc.get(f), bytes)]
    while doc_size(fitted.doc) > DOC_BUDGET and candidates:
        name = max(candidates, key=lambda f: len(fitted.doc[f]))
        candidates.remove(name)
        data: bytes = fitted.doc.pop(name)
        digest = hashlib.sha256(data).hexdigest()[:32]
        pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        for chunk_id, piece in zip(
            chunk_ids(kind, owner_id, name, len(pieces), digest), pieces, strict=True
        ):
            fitted.chunks[chunk_id] = {"d": piece}
        refs = dict(fitted.doc.get(CHUNK_REFS) or {})
        refs[name] = {"n": len(pieces), "h": digest}
        fitted.doc[CHUNK_REFS] = refs
    if doc_size(fitted.doc) > DOC_BUDGET:
        raise ValueError(f"document {owner_id!r} is too large for Firestore even chunked")
    return fitted


def chunk_refs(kind: str, owner_id: str, doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """field → the ids of its chunks, in order."""
    refs = doc.get(CHUNK_REFS) or {}
    return {
        name: chunk_ids(kind, owner_id, name, int(r["n"]), str(r["h"])) for name, r in refs.items()
    }


def joined(doc: Mapping[str, Any], pieces: Mapping[str, list[bytes | None]]) -> Doc:
    """`doc` with each chunked field put back together from its `pieces`."""
    whole = {k: v for k, v in doc.items() if k != CHUNK_REFS}
    for name, ref in (doc.get(CHUNK_REFS) or {}).items():
        parts = pieces.get(name, [])
        if any(p is None for p in parts) or len(parts) != int(ref["n"]):
            raise ValueError(f"chunks of a stored value ({name}) are missing")
        data = b"".join(p for p in parts if p is not None)
        if hashlib.sha256(data).hexdigest()[:32] != ref["h"]:
            raise ValueError(f"chunks of a stored value ({name}) are altered")
        whole[name] = data
    return whole
