"""The hot tier's Lua scripts, called directly on a real Redis, one entry state per row.

Each row sets up an entry hash, runs one script through `hot_protocol` (the module that builds
every KEYS/ARGV list), and checks the script's answer and the entry it leaves: the floor, the
generation, early writes (before their checkpoint's install), late writes (after its child's),
staged changes and invalidation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from threadline.checkpointers import hot_protocol as hp

TTL = 60_000
CHANNEL = "messages"


@dataclass
class Row:
    name: str
    entry: dict[bytes, bytes]  # the hash before the call
    call: Callable[[tuple[str, str]], hp.ScriptCall]
    script: str
    answer: Any
    has: dict[bytes, bytes] = field(default_factory=dict)  # fields after the call
    lacks: list[bytes] = field(default_factory=list)


def install(
    checkpoint_id: str,
    *,
    parent: str = "",
    expected_gen: str = "",
    token: str = "",
    fields: list[tuple[bytes, Any]] | None = None,
) -> Callable[[tuple[str, str]], hp.ScriptCall]:
    return lambda keys: hp.install_call(
        keys,
        ttl_ms=TTL,
        checkpoint_ns="",
        checkpoint_id=checkpoint_id,
        parent=parent,
        expected_gen=expected_gen,
        head=b"head-" + checkpoint_id.encode(),
        token=token,
        commits=(),
        history=(),
        snapshots=(),
        fields=fields or [],
    )


def writes(checkpoint_id: str, task: str = "t1") -> Callable[[tuple[str, str]], hp.ScriptCall]:
    return lambda keys: hp.writes_call(
        keys,
        ttl_ms=TTL,
        checkpoint_id=checkpoint_id,
        upsert=True,
        token="",
        commits=(),
        fields=[(hp.write_field(task, 0, CHANNEL), b"w")],
    )


def held(checkpoint_id: str, **more: bytes) -> dict[bytes, bytes]:
    return {
        b"id": checkpoint_id.encode(),
        b"floor": checkpoint_id.encode(),
        b"cp": b"h",
        **{k.encode(): v for k, v in more.items()},
    }


EARLY = b"e:0003\0t1\x000\0" + CHANNEL.encode()
LATE = hp.delta_prefix(CHANNEL.encode()) + b"0002\0t1\x000\0" + CHANNEL.encode()

ROWS = [
    Row(
        "an empty entry takes a whole install",
        {},
        install("0001"),
        "install",
        1,
        has={b"id": b"0001", b"floor": b"0001", b"cp": b"head-0001"},
    ),
    Row(
        "nothing older than the floor is installed",
        held("0005"),
        install("0003"),
        "install",
        0,
        has={b"id": b"0005"},
    ),
    Row(
        "a warm for another generation is refused",
        {**held("0001"), b"gen": b"g1"},
        install("0002", expected_gen="g2"),
        "install",
        0,
        has={b"id": b"0001"},
    ),
    Row(
        "a warm for this generation lands",
        {**held("0001"), b"gen": b"g1"},
        install("0002", expected_gen="g1"),
        "install",
        1,
        has={b"id": b"0002"},
    ),
    Row(
        "a partial install needs its parent",
        held("0001"),
        install("0003", parent="0002"),
        "install",
        -1,
        has={b"id": b"0001"},
    ),
    Row(
        "early writes wait for their checkpoint",
        held("0002"),
        writes("0003"),
        "writes",
        1,
        has={EARLY: b"w"},
    ),
    Row(
        "an install adopts its early writes",
        {**held("0002"), EARLY: b"w"},
        install("0003", parent="0002"),
        "install",
        1,
        has={hp.write_field("t1", 0, CHANNEL): b"w"},
        lacks=[EARLY],
    ),
    Row(
        "late writes to the parent join the history built from it",
        {**held("0003"), b"up": b"0002", hp.history_field(CHANNEL): b"0003"},
        writes("0002"),
        "writes",
        0,
        has={LATE: b"w"},
    ),
    Row(
        "late writes elsewhere drop the history they miss",
        {**held("0003"), b"up": b"0001", hp.history_field(CHANNEL): b"0003"},
        writes("0002"),
        "writes",
        0,
        lacks=[hp.history_field(CHANNEL), LATE],
    ),
    Row(
        "invalidating below an entry's checkpoint leaves it",
        held("0005"),
        lambda keys: hp.invalidate_call(
            keys, ttl_ms=TTL, checkpoint_ns="", below="0004", reset_floor=False, new_gen="g9"
        ),
        "invalidate",
        0,
        has={b"id": b"0005"},
    ),
    Row(
        "invalidating drops the entry and raises the floor",
        held("0005"),
        lambda keys: hp.invalidate_call(
            keys, ttl_ms=TTL, checkpoint_ns="", below="0006", reset_floor=False, new_gen="g9"
        ),
        "invalidate",
        1,
        has={b"floor": b"0006", b"gen": b"g9"},
        lacks=[b"id", b"cp"],
    ),
]


@pytest.fixture
async def redis_client(plain_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(plain_redis_url)
    yield client
    await client.aclose()


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_entry_states(row: Row, redis_client: Redis) -> None:
    keys = (f"test:{{{uuid.uuid4().hex}}}:h:", f"test:{{{uuid.uuid4().hex}}}:ns")
    if row.entry:
        await redis_client.hset(keys[0], mapping=row.entry)  # type: ignore[misc]
    answer = await hp.Scripts(redis_client).run(row.script, row.call(keys))
    after = await redis_client.hgetall(keys[0])  # type: ignore[misc]
    assert answer == row.answer
    assert {k: after.get(k) for k in row.has} == row.has
    assert [k for k in row.lacks if k in after] == []


async def test_a_staged_install_reads_as_pending_until_committed(redis_client: Redis) -> None:
    keys = (f"test:{{{uuid.uuid4().hex}}}:h:", f"test:{{{uuid.uuid4().hex}}}:ns")
    scripts = hp.Scripts(redis_client)
    assert await scripts.run("install", install("0001", token="tok")(keys)) == 1

    def read() -> hp.ScriptCall:
        return hp.read_call(keys, ttl_ms=TTL, abandoned_seconds=60, commits=(), known=())

    state, _ = await scripts.run("read", read())
    assert state == 1  # staged: not to be served
    await redis_client.hdel(keys[0], hp.staged_field("tok"))  # type: ignore[misc]
    state, fields = await scripts.run("read", read())
    assert state == 0 and dict(zip(fields[::2], fields[1::2], strict=True))[b"id"] == b"0001"


async def test_calls_sent_together_load_the_scripts_redis_lacks(redis_client: Redis) -> None:
    """A turn's stages go in one pipeline; after a Redis restart (no scripts loaded) each
    call refused for it runs again, in order, once its script is loaded."""
    keys = (f"test:{{{uuid.uuid4().hex}}}:h:", f"test:{{{uuid.uuid4().hex}}}:ns")
    scripts = hp.Scripts(redis_client)
    await redis_client.script_flush()
    answers = await scripts.run_together(
        [("install", install("0001")(keys)), ("writes", writes("0001")(keys))]
    )
    assert answers == [1, 1]
    after = await redis_client.hgetall(keys[0])  # type: ignore[misc]
    assert after[b"id"] == b"0001" and any(k.startswith(b"w:") for k in after)
