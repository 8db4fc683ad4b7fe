"""What a checkpoint is between serialisation and I/O: shared by the durable and hot tiers.

The durable saver serialises a checkpoint once (`PreparedCheckpoint`, `PreparedWrites`) and
hands the same bytes to Postgres and to Redis; either tier reads one back as a
`CheckpointRecord`. Rows are named tuples in the column order of the stock Postgres tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint
from langgraph.checkpoint.memory import InMemorySaver

from threadline.checkpointers.receipts import Receipt
from threadline.checkpointers.records import ThreadRecord
from threadline.compat import DeltaSnapshot

Statement = tuple[str, Sequence[Any]]  # SQL and its parameters
# One saver write as LangGraph made it: ("aput", its arguments) or ("aput_writes", its arguments).
SaverCall = tuple[str, tuple[Any, ...]]


class BlobRow(NamedTuple):
    """A `checkpoint_blobs` row."""

    thread_id: str
    checkpoint_ns: str
    channel: str
    version: str
    type: str
    blob: bytes | None


class WriteRow(NamedTuple):
    """A `checkpoint_writes` row."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    task_path: str
    idx: int
    channel: str
    type: str
    blob: bytes


class PendingWrite(NamedTuple):
    """A pending write as a stored checkpoint carries it (value still serialised)."""

    task_id: str
    channel: str
    type: str
    blob: bytes
    task_path: str
    idx: int


def next_version(current: str | None) -> str:
    """The channel version after `current`, as LangGraph's stock savers write them (ordered
    strings); the stock method uses nothing of its saver."""
    return InMemorySaver.get_next_version(cast(Any, None), current, None)


def checkpoint_config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    """The config that names one stored checkpoint (what every saver hands back)."""
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


@dataclass
class PreparedCheckpoint:
    """A checkpoint serialised once, ready for Postgres and for the hot tier."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: Checkpoint
    skeleton: dict[str, Any]  # checkpoint with only its inline (primitive) values, plaintext
    metadata: dict[str, Any]  # plaintext, as stored
    blob_channels: list[str]  # channels whose values live in checkpoint_blobs
    blob_rows: list[BlobRow]  # checkpoint_blobs rows for this put's new versions
    row: tuple[Any, ...]  # the checkpoints row
    receipts: list[Receipt] = field(default_factory=list)  # recorded with the row
    record: ThreadRecord | None = None  # upserted with the row

    def snapshots(self) -> dict[str, tuple[str, Any]]:
        """Channel -> (version, value) of the delta-channel snapshots this put stores."""
        versions = self.checkpoint["channel_versions"]
        return {
            k: (str(versions[k]), v.value)
            for k, v in self.checkpoint["channel_values"].items()
            if isinstance(v, DeltaSnapshot) and k in versions
        }

    def new_blobs(self) -> dict[str, tuple[str, str, bytes]]:
        """Channel -> (version, type, bytes) of the values this put wrote."""
        return {
            r.channel: (r.version, r.type, r.blob or b"")
            for r in self.blob_rows
            if r.type != "empty"
        }

    @property
    def next_config(self) -> RunnableConfig:
        return checkpoint_config(self.thread_id, self.checkpoint_ns, self.checkpoint_id)


@dataclass
class PreparedWrites:
    """Pending writes serialised once, as checkpoint_writes rows."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    rows: list[WriteRow]
    upsert: bool


@dataclass
class CheckpointRecord:
    """One stored checkpoint, decrypted but with channel blobs still serialised."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    skeleton: dict[str, Any]
    metadata: dict[str, Any]
    blobs: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # channel → (type, blob)
    writes: list[PendingWrite] = field(default_factory=list)
