"""Checkpoint savers chosen by settings. Knows nothing of the agent's state or of HTTP."""

from threadline.checkpointers.factory import open_checkpointer, open_postgres_pool
from threadline.checkpointers.serde import make_serializer

__all__ = ["make_serializer", "open_checkpointer", "open_postgres_pool"]
