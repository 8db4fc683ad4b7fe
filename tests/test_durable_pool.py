"""The durable saver: no saver-wide lock, and stock-schema compatibility both ways."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from tests.fixtures.checkpointers import human_texts, offline_agent, take_turns, thread_config
from threadline.checkpointers.durable import DurablePostgresSaver, open_pool


async def _blocked_put_and_other_read(saver, db_url: str) -> bool:
    """Hold a row lock so one put hangs in Postgres; True if a read of another thread still
    completes meanwhile."""
    busy = {"configurable": {"thread_id": f"busy-{uuid.uuid4().hex}", "checkpoint_ns": ""}}
    idle = {"configurable": {"thread_id": f"idle-{uuid.uuid4().hex}", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    await saver.aput(busy, checkpoint, {"step": 0}, {})
    await saver.aput(idle, empty_checkpoint(), {"step": 0}, {})
    with psycopg.connect(db_url) as locker:
        locker.execute(
            "SELECT 1 FROM checkpoints WHERE thread_id = %s FOR UPDATE",
            (busy["configurable"]["thread_id"],),
        )
        hung = asyncio.create_task(saver.aput(busy, checkpoint, {"step": 1}, {}))
        await asyncio.sleep(0.2)
        assert not hung.done()  # really waiting on the row lock
        try:
            await asyncio.wait_for(saver.aget_tuple(idle), timeout=2)
            other_read = True
        except TimeoutError:
            other_read = False
        locker.rollback()
    await hung
    return other_read


async def test_one_slow_operation_does_not_stall_the_others(open_durable, postgres_db_url):
    async with open_durable(pool_size=4) as saver:
        assert await _blocked_put_and_other_read(saver, postgres_db_url)


async def test_the_stock_saver_stalls_in_the_same_drill(postgres_db_url):
    """Control: the stock saver's global lock makes the same read wait, so the drill above
    can tell the difference."""
    async with open_pool(postgres_db_url, 4) as pool:
        stock = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await stock.setup()
        assert not await _blocked_put_and_other_read(stock, postgres_db_url)


@pytest.mark.parametrize("first", ["stock", "durable"])
async def test_threads_read_back_across_stock_and_durable_savers(first, postgres_db_url):
    async with open_pool(postgres_db_url, 4) as pool:
        stock = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await stock.setup()
        durable = DurablePostgresSaver(pool)
        writer, reader = (stock, durable) if first == "stock" else (durable, stock)
        config = thread_config("interop")
        await take_turns(offline_agent(writer, max_context_tokens=256), config, ["one", "two"])
        continued = offline_agent(reader, max_context_tokens=256)
        assert human_texts(await continued.aget_state(config)) == ["one", "two"]
        await take_turns(continued, config, ["three"])
        back = offline_agent(writer, max_context_tokens=256)
        state = await back.aget_state(config)
        assert human_texts(state) == ["one", "two", "three"]
        history = [s async for s in back.aget_state_history(config)]
        assert len(history) == len([c async for c in reader.alist(config)])
