"""Retention: threads expire after an idle TTL (deleted, cut to their latest checkpoint, or
archived to cold storage), can be restored, and are swept by one replica at a time."""

from threadline.retention.archive import ArchiveError, ArchiveStore, open_archive
from threadline.retention.keeper import NoArchiveError, NotArchivedError, ThreadKeeper
from threadline.retention.sweeper import Sweeper, SweepReport

__all__ = [
    "ArchiveError",
    "ArchiveStore",
    "NoArchiveError",
    "NotArchivedError",
    "SweepReport",
    "Sweeper",
    "ThreadKeeper",
    "open_archive",
]
