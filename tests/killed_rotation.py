"""A key rotation that SIGKILLs its own process after its `nth` batch, for
`test_key_rotation.py`: `python -m tests.killed_rotation <nth>` (settings from the environment)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from threadline.checkpointers import open_checkpointer
from threadline.checkpointers.durable import DurablePostgresSaver
from threadline.checkpointers.rotation import rotate_postgres, rotate_sqlite
from threadline.settings import Settings


async def main(nth: int) -> None:
    settings = Settings.from_env().check(model=False)
    batches = 0

    def progress(what: str, rows: int) -> None:
        nonlocal batches
        batches += 1
        if batches == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    async with open_checkpointer(settings) as saver:
        ring = saver.serde.cipher  # type: ignore[attr-defined]
        durable = getattr(saver, "durable", saver)
        if isinstance(durable, DurablePostgresSaver):
            await rotate_postgres(durable, ring, 2, progress)
        else:
            await rotate_sqlite(saver, ring, 2, progress)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
