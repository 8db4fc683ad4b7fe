"""The tiered saver's invalidation journal, with Postgres alone: Redis is only the callback the
saver hands it, so here a list records what it would have invalidated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadline.checkpointers.durable import DurablePostgresSaver
from threadline.checkpointers.tiered.journal import WHOLE_THREAD, InvalidationJournal, Key
from threadline.checkpointers.tiered.schema import migrate


class RedisStandIn:
    """What the journal asked Redis to invalidate; `up` False answers as an unreachable Redis."""

    def __init__(self) -> None:
        self.invalidated: list[tuple[Key, str]] = []
        self.up = True

    async def __call__(self, key: Key, below: str) -> bool:
        if self.up:
            self.invalidated.append((key, below))
        return self.up


@pytest.fixture
async def durable(postgres_db_url: str) -> AsyncIterator[DurablePostgresSaver]:
    async with DurablePostgresSaver.from_conn_string(postgres_db_url, setup=False) as saver:
        await migrate(saver)
        yield saver


async def rows(durable: DurablePostgresSaver) -> list[tuple[str, str, str]]:
    async with durable.cursor() as cur:
        await cur.execute("SELECT thread_id, checkpoint_ns, below FROM threadline_hot_invalid")
        return sorted(
            (r["thread_id"], r["checkpoint_ns"], r["below"]) for r in await cur.fetchall()
        )


async def test_a_journalled_entry_is_kept_from_every_replica_until_repaired(
    durable: DurablePostgresSaver,
) -> None:
    redis = RedisStandIn()
    writer, other = InvalidationJournal(durable, redis), InvalidationJournal(durable, redis)
    await writer.record(("t1", ""), "0003")
    await writer.record(("t1", ""), "0002")  # the higher mark stands
    await writer.record(("t2", WHOLE_THREAD), "")
    assert await rows(durable) == [("t1", "", "0003"), ("t2", WHOLE_THREAD, "")]

    redis.up = False  # another replica, starting while Redis is out: loads, cannot repair
    assert not await other.ready(("t1", ""), lambda: False)
    assert not await other.ready(("t2", "ns"), lambda: False)  # the whole thread is suspect
    assert await other.ready(("t3", ""), lambda: False)  # untouched threads are fine
    assert len(await rows(durable)) == 2

    redis.up = True
    assert await other.ready(("t1", ""), lambda: True)
    assert (("t1", ""), "0003") in redis.invalidated
    assert await rows(durable) == [("t2", WHOLE_THREAD, "")]
    assert ("t1", "") not in other.suspects
    for journal in (writer, other):
        await journal.aclose()
