"""Checkpoint savers chosen by settings. Knows nothing of the agent's state or of HTTP.

The savers load on first use, so importing the package does not pull in Redis or Postgres.
"""

from typing import Any

from threadline.checkpointers.factory import open_checkpointer
from threadline.checkpointers.serde import UnencryptedDataError, make_serializer

_LAZY = {
    "DurablePostgresSaver": "threadline.checkpointers.durable",
    "HotTier": "threadline.checkpointers.hot",
    "open_pool": "threadline.checkpointers.durable",
    "TieredSaver": "threadline.checkpointers.tiered",
}

__all__ = [
    "DurablePostgresSaver",
    "HotTier",
    "TieredSaver",
    "UnencryptedDataError",
    "make_serializer",
    "open_checkpointer",
    "open_pool",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
