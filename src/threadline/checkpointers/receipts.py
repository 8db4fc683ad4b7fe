"""Turn receipts: what lets a retried turn find the checkpoint its first run stored.

A checkpoint's metadata may carry `RECEIPTS_METADATA`: the names the turn is known by (opaque
hashes, never the caller's key or message id), a digest per name, and when they expire. Every
saver threadline opens copies them into a store of its own in the same write as the
checkpoint, so a receipt exists exactly when its turn does and outlives any pruning of the
checkpoint history; `aget_receipt` finds one in O(1). The store forgets receipts at
`expires_at` and with their thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

RECEIPTS_METADATA = "threadline_receipts"


@dataclass(frozen=True)
class Receipt:
    """One name of a stored turn: the digest it was stored with and where its result lies."""

    name: str
    digest: str
    checkpoint_ns: str
    checkpoint_id: str
    expires_at: float  # Unix seconds


@runtime_checkable
class KeepsReceipts(Protocol):
    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        """The live receipt `name` of `thread_id`, if its turn was stored."""
        ...


def receipts_metadata(digests: Mapping[str, str], expires_at: float) -> dict[str, Any]:
    """The metadata entry that makes a checkpoint's savers record `digests` (name → digest)."""
    return {RECEIPTS_METADATA: {"names": dict(digests), "expires_at": expires_at}}


def receipts_in(
    metadata: Mapping[str, Any], checkpoint_ns: str, checkpoint_id: str
) -> list[Receipt]:
    """The receipts a checkpoint with `metadata` asks its saver to record."""
    entry = metadata.get(RECEIPTS_METADATA)
    if not isinstance(entry, Mapping):
        return []
    expires_at = float(entry["expires_at"])
    return [
        Receipt(str(name), str(digest), checkpoint_ns, checkpoint_id, expires_at)
        for name, digest in dict(entry["names"]).items()
    ]


def live(receipt: Receipt | None, now: float | None = None) -> Receipt | None:
    """`receipt` unless it has expired."""
    if receipt is None or receipt.expires_at <= (time.time() if now is None else now):
        return None
    return receipt
