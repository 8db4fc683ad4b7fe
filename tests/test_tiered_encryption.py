"""Encryption at rest: with a key, neither Postgres nor Redis holds a byte of plaintext."""

from __future__ import annotations

import subprocess
import uuid
import zlib
from urllib.parse import urlsplit

import ormsgpack
import pytest
import redis
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

from tests.fixtures.checkpointers import offline_agent, take_turns, thread_config
from threadline.checkpointers.durable import open_pool
from threadline.checkpointers.serde import UnencryptedDataError, make_serializer
from threadline.dev.services import postgres_bindir

KEY = "0123456789abcdef0123456789abcdef"
FILLER = " and then some more words to fill the context budget quickly" * 4


def postgres_dump(db_url: str) -> bytes:
    """`pg_dump` of the whole database: every table, every column, as stored."""
    parts = urlsplit(db_url)
    return subprocess.run(
        [
            str(postgres_bindir() / "pg_dump"),
            "-h", parts.hostname or "127.0.0.1",
            "-p", str(parts.port),
            "-U", parts.username or "postgres",
            "--data-only",
            parts.path.lstrip("/"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout  # fmt: skip


def inflated(value: bytes) -> list[bytes]:
    """A hot-tier value the tier stored compressed, decompressed (else nothing)."""
    try:
        items = ormsgpack.unpackb(value)
    except ormsgpack.MsgpackDecodeError:
        return []
    if isinstance(items, list) and len(items) == 4 and items[3] == "zlib":
        return [zlib.decompress(items[2])]
    return []


def redis_dump(redis_url: str, prefix: str) -> bytes:
    """Every key and value under `prefix`, as Redis holds them (and inflated if stored
    compressed, which would otherwise hide plaintext from the search)."""
    client = redis.Redis.from_url(redis_url)
    chunks: list[bytes] = []
    try:
        for key in client.scan_iter(match=f"{prefix}:*"):
            chunks.append(key)
            if client.type(key) == b"hash":
                for field, value in client.hgetall(key).items():
                    chunks += [field, value, *inflated(value)]
            else:
                chunks += list(client.smembers(key))
    finally:
        client.close()
    return b"\n".join(chunks)


def leaks(dump: bytes, canary: str) -> bool:
    return canary.encode() in dump or canary.encode().hex().encode() in dump


async def converse_with_canary(saver, canary: str):
    graph = offline_agent(saver, max_context_tokens=256)
    config = thread_config("enc")
    config["metadata"] = {"note": canary}
    await take_turns(graph, config, [f"{canary} turn {i}{FILLER}" for i in range(4)])
    return (await graph.aget_state(config)).values


@pytest.mark.parametrize("encrypted", [True, False], ids=["aes", "control-without-key"])
async def test_canary_never_stored_in_plaintext(
    encrypted, open_tiered, postgres_db_url, plain_redis_url
):
    canary = f"cx{uuid.uuid4().hex[:8]}"  # short: the summary keeps only a few words
    prefix = f"enc{uuid.uuid4().hex[:8]}"
    serde = make_serializer(KEY if encrypted else None)
    async with open_tiered(key_prefix=prefix, serde=serde) as saver:
        values = await converse_with_canary(saver, canary)
    # The canary really is in the state: in messages and in the running summary (a str).
    assert canary in values["messages"][0].content
    assert canary in values.get("summary", ""), "the summary never folded the canary in"
    dumps = {
        "postgres": postgres_dump(postgres_db_url),
        "redis": redis_dump(plain_redis_url, prefix),
    }
    assert all(dumps.values())
    leaked = {where for where, dump in dumps.items() if leaks(dump, canary)}
    # Without a key the same search finds it in both tiers, so the search itself works.
    assert leaked == (set() if encrypted else {"postgres", "redis"})


async def test_rows_written_without_the_key_are_refused(open_tiered):
    prefix = f"ref{uuid.uuid4().hex[:8]}"
    async with open_tiered(key_prefix=prefix) as plain:
        graph = offline_agent(plain)
        config = thread_config("plain")
        await take_turns(graph, config, ["written in clear"])
    async with open_tiered(key_prefix=prefix, serde=make_serializer(KEY)) as keyed:
        with pytest.raises(UnencryptedDataError):
            await keyed.aget_tuple(config)  # the Redis entry
        with pytest.raises(UnencryptedDataError):
            await keyed.durable.aget_tuple(config)  # the Postgres rows


async def test_stock_encrypted_rows_with_plaintext_values_are_refused(
    postgres_db_url, open_durable
):
    """The stock saver keeps a str summary and metadata as plaintext JSONB even when it
    encrypts; those rows are refused rather than read."""
    stock_serde = EncryptedSerializer.from_pycryptodome_aes(key=KEY.encode())
    config = {"configurable": {"thread_id": f"stock-{uuid.uuid4().hex}", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {
        "messages": [HumanMessage("hi"), AIMessage("hello")],
        "summary": "a plaintext summary",
    }
    checkpoint["channel_versions"] = {"messages": "1", "summary": "1"}
    async with open_pool(postgres_db_url, 2) as pool:
        stock = AsyncPostgresSaver(pool, serde=stock_serde)  # type: ignore[arg-type]
        await stock.setup()
        await stock.aput(config, checkpoint, {"source": "input"}, {"messages": "1", "summary": "1"})
    async with open_durable(serde=make_serializer(KEY)) as durable:
        with pytest.raises(UnencryptedDataError, match="unencrypted"):
            await durable.aget_tuple(config)
