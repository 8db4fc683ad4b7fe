"""A sweep (or restore) that SIGKILLs its own process at a chosen point, for
`test_retention_crashes.py`.

`python -m tests.killed_sweep <command> <point> <nth> [thread keys...]`: `command` is `sweep` (as
of an hour from now, until nothing is left) or `restore` (the given threads); the process kills
itself right after the `nth` call of `point` returns (`point` `none`: never). Settings come
from the environment, as for the CLI.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from threadline.assembly import open_keeper
from threadline.checkpointers.records import ARCHIVED
from threadline.retention import Sweeper
from threadline.settings import Settings


def kill_after(owner: Any, name: str, nth: int) -> None:
    original = getattr(owner, name)
    calls = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = await original(*args, **kwargs)
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, counted)


async def main(command: str, point: str, nth: int, keys: list[str]) -> None:
    settings = Settings.from_env().check(model=False)
    async with open_keeper(settings) as (keeper, locks):
        saver = keeper.graph.checkpointer
        owners = {
            "archive.put": (keeper.archive, "put"),
            "archive.get": (keeper.archive, "get"),
            "mark": (saver, "aupdate_thread_record"),
            "delete": (saver, "adelete_checkpoints"),
            "snapshot": (keeper.graph, "aupdate_state"),
            "delete_thread": (saver, "adelete_thread"),
            "archive.delete": (keeper.archive, "delete"),
        }
        if point != "none":
            kill_after(*owners[point], nth)
        if command == "sweep":
            sweeper = Sweeper(keeper, locks, settings.ttl_strategy, None, batch_size=4)
            report = await sweeper.sweep(now=time.time() + 3600, max_batches=None)
            print(report.summary())
        else:
            for key in keys:  # those a killed run left archived
                record = await keeper.records.aget_thread_record(key)
                if record is not None and record.status == ARCHIVED:
                    await keeper.restore(key)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
