"""Ciphertext bound to its place: a stored value copied onto another thread, checkpoint or
channel — in SQL or in Redis — is refused, never served (langgraph#9004)."""

from __future__ import annotations

import base64
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiosqlite
import ormsgpack
import psycopg
import pytest
import redis
from langchain_core.messages import HumanMessage
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.fixtures.checkpointers import offline_agent, take_turns, thread_config
from tests.fixtures.server import settings_for
from threadline.assembly import open_keeper
from threadline.checkpointers.durable import SEALED_VALUES
from threadline.checkpointers.places import checkpoint_place
from threadline.checkpointers.rotation import POSTGRES_TYPED_TABLES, rotate, stale_rows
from threadline.checkpointers.serde import KeyRing, MisplacedValueError, make_serializer
from threadline.checkpointers.sqlite import SqliteSaver
from threadline.retention.archive import ArchiveError, object_name
from threadline.server.turns import TurnRunner

KEY = "0123456789abcdef0123456789abcdef"


async def two_threads(saver: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A graph on `saver` and two threads of two turns each."""
    graph = offline_agent(saver)
    first, second = thread_config("first"), thread_config("second")
    await take_turns(graph, first, ["the first thread's secret plan", "and more"])
    await take_turns(graph, second, ["the second thread", "and more"])
    return graph, first, second


def thread_of(config: dict[str, Any]) -> str:
    return str(config["configurable"]["thread_id"])


def first_write(conn: psycopg.Connection[Any], thread_id: str) -> tuple[Any, ...]:
    """The thread's first transcript write (its first human message): key, type, blob."""
    row = conn.execute(
        "SELECT checkpoint_id, task_id, idx, type, blob FROM checkpoint_writes"
        " WHERE thread_id = %s AND channel = 'messages' ORDER BY checkpoint_id LIMIT 1",
        (thread_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def copy_first_write(postgres_url: str, source: str, target: str) -> None:
    """The source thread's first transcript write, copied in SQL onto the target's."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        *_, type_tag, blob = first_write(conn, source)
        checkpoint_id, task_id, idx, *_ = first_write(conn, target)
        conn.execute(
            "UPDATE checkpoint_writes SET type = %s, blob = %s WHERE thread_id = %s"
            " AND checkpoint_id = %s AND task_id = %s AND idx = %s",
            (type_tag, blob, target, checkpoint_id, task_id, idx),
        )


def blob_versions(conn: psycopg.Connection[Any], thread_id: str, channel: str) -> list[str]:
    rows = conn.execute(
        "SELECT version FROM checkpoint_blobs WHERE thread_id = %s AND channel = %s"
        " ORDER BY version",
        (thread_id, channel),
    ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("encrypted", [True, False], ids=["aes", "control-without-key"])
async def test_a_value_copied_to_another_thread_in_sql_is_refused(
    encrypted: bool, open_durable: Any, postgres_db_url: str
) -> None:
    serde = make_serializer(KEY if encrypted else None)
    async with open_durable(serde=serde) as saver:
        graph, first, second = await two_threads(saver)
        copy_first_write(postgres_db_url, thread_of(first), thread_of(second))
        saver.delta_histories.forget_thread(thread_of(second))
        if encrypted:
            with pytest.raises(MisplacedValueError, match="does not belong"):
                await graph.aget_state(second)
        else:  # the copy is served: what binding prevents
            state = await graph.aget_state(second)
            assert "secret plan" in state.values["messages"][0].content


async def test_values_copied_between_checkpoints_and_channels_are_refused(
    open_durable: Any, postgres_db_url: str
) -> None:
    async with open_durable(serde=make_serializer(KEY)) as saver:
        _, first, _ = await two_threads(saver)
        thread_id = thread_of(first)
        checkpoints = [t.config async for t in saver.alist(first)]
        newest, middle, oldest = checkpoints[0], checkpoints[len(checkpoints) // 2], checkpoints[-1]
        with psycopg.connect(postgres_db_url, autocommit=True) as conn:
            # The newest checkpoint's sealed metadata onto the oldest checkpoint.
            conn.execute(
                "UPDATE checkpoints SET metadata = (SELECT metadata FROM checkpoints"
                " WHERE thread_id = %(t)s AND checkpoint_id = %(new)s)"
                " WHERE thread_id = %(t)s AND checkpoint_id = %(old)s",
                {
                    "t": thread_id,
                    "new": newest["configurable"]["checkpoint_id"],
                    "old": oldest["configurable"]["checkpoint_id"],
                },
            )
            # A channel's newer value onto its older version, and another channel's value
            # onto the newer one.
            older, newer = blob_versions(conn, thread_id, "telemetry")[-2:]
            start = blob_versions(conn, thread_id, "__start__")[-1]
            copy = (
                "UPDATE checkpoint_blobs SET (type, blob) = (SELECT type, blob FROM"
                " checkpoint_blobs WHERE thread_id = %(t)s AND channel = %(from_ch)s"
                " AND version = %(from_v)s)"
                " WHERE thread_id = %(t)s AND channel = 'telemetry' AND version = %(to_v)s"
            )
            conn.execute(copy, {"t": thread_id, "from_ch": "telemetry", "from_v": newer,
                                "to_v": older})  # fmt: skip
            conn.execute(copy, {"t": thread_id, "from_ch": "__start__", "from_v": start,
                                "to_v": newer})  # fmt: skip
        for config in (oldest, middle, newest):
            with pytest.raises(MisplacedValueError):
                await saver.aget_tuple(config)


async def test_a_pending_write_copied_to_another_checkpoint_is_refused(
    open_durable: Any, postgres_db_url: str
) -> None:
    async with open_durable(serde=make_serializer(KEY)) as saver:
        _, first, _ = await two_threads(saver)
        thread_id = thread_of(first)
        newest = (await saver.aget_tuple(first)).config  # type: ignore[union-attr]
        await saver.aput_writes(newest, [("messages", ["a late write"])], "task-1")
        with psycopg.connect(postgres_db_url, autocommit=True) as conn:
            parent = conn.execute(
                "SELECT parent_checkpoint_id FROM checkpoints"
                " WHERE thread_id = %s AND checkpoint_id = %s",
                (thread_id, newest["configurable"]["checkpoint_id"]),
            ).fetchone()
            assert parent is not None
            conn.execute(
                "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id,"
                " task_path, idx, channel, type, blob) SELECT thread_id, checkpoint_ns, %s,"
                " task_id, task_path, idx, channel, type, blob FROM checkpoint_writes"
                " WHERE thread_id = %s AND task_id = 'task-1'",
                (parent[0], thread_id),
            )
        parent_config = {"configurable": {**newest["configurable"], "checkpoint_id": parent[0]}}
        with pytest.raises(MisplacedValueError):
            await saver.aget_tuple(parent_config)
        assert (await saver.aget_tuple(newest)).pending_writes  # type: ignore[union-attr]


@pytest.mark.parametrize("encrypted", [True, False], ids=["aes", "control-without-key"])
async def test_a_hot_value_copied_to_another_thread_in_redis_is_refused(
    encrypted: bool, open_tiered: Any, plain_redis_url: str
) -> None:
    serde = make_serializer(KEY if encrypted else None)
    async with open_tiered(serde=serde) as saver:
        graph, first, second = await two_threads(saver)
        client = redis.Redis.from_url(plain_redis_url)
        try:
            source, _ = saver.hot.keys(thread_of(first), "")
            target, _ = saver.hot.keys(thread_of(second), "")

            def first_history_write(entry: str) -> tuple[bytes, list[Any]]:
                fields = sorted(f for f in client.hkeys(entry) if f.startswith(b"d:messages\0"))
                assert fields, "the entry holds the transcript's writes"
                return fields[0], ormsgpack.unpackb(client.hget(entry, fields[0]))

            _, (_, _, type_tag, blob, _, _) = first_history_write(source)
            field, (task_id, channel, _, _, path, idx) = first_history_write(target)
            # The first thread's message, dressed as the second's (its entry, task, position).
            client.hset(
                target, field, ormsgpack.packb([task_id, channel, type_tag, blob, path, idx])
            )
        finally:
            client.close()
        saver.durable.delta_histories.forget_thread(thread_of(second))
        if encrypted:
            with pytest.raises(MisplacedValueError):
                await graph.aget_state(second)
        else:  # served from Redis: the copy shows
            state = await graph.aget_state(second)
            assert "secret plan" in state.values["messages"][0].content


async def test_copy_thread_rebinds_so_the_copy_reads(open_durable: Any) -> None:
    async with open_durable(serde=make_serializer(KEY)) as saver:
        graph, first, _ = await two_threads(saver)
        copy = thread_config("copy")
        await saver.acopy_thread(thread_of(first), thread_of(copy))
        await saver.acopy_thread(thread_of(first), thread_of(copy))  # onto rows already there
        original = await graph.aget_state(first)
        copied = await graph.aget_state(copy)
        assert copied.values["messages"] == original.values["messages"]
        await take_turns(graph, copy, ["the copy goes on"])
        assert len((await graph.aget_state(copy)).values["messages"]) == 6


def unbind_every_value(postgres_url: str, ring: KeyRing) -> None:
    """Rewrite every stored value as releases before binding wrote it: encrypted, unbound."""
    with psycopg.connect(postgres_url, autocommit=True, row_factory=dict_row) as conn:
        for table, (keys, place_of) in POSTGRES_TYPED_TABLES.items():
            for row in conn.execute(f"SELECT * FROM {table} WHERE type LIKE '%%+%%'").fetchall():
                base, _, name = row["type"].partition("+")
                legacy_name, blob = ring.encrypt(ring.decrypt(name, row["blob"], place_of(row)))
                conn.execute(
                    f"UPDATE {table} SET type = %s, blob = %s WHERE "
                    + " AND ".join(f"{k} = %s" for k in keys),
                    (f"{base}+{legacy_name}", blob, *(row[k] for k in keys)),
                )
        for row in conn.execute("SELECT * FROM checkpoints").fetchall():
            where = (row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])
            checkpoint, metadata = row["checkpoint"], row["metadata"]
            for holder, key, kind in (
                (checkpoint, SEALED_VALUES, "values"),
                (metadata, "$enc", "metadata"),
            ):
                if key in holder:
                    type_tag, blob = holder[key][0], base64.b64decode(holder[key][1])
                    base, _, name = type_tag.partition("+")
                    plain = ring.decrypt(name, blob, checkpoint_place(kind, *where))
                    legacy_name, blob = ring.encrypt(plain)
                    holder[key] = [f"{base}+{legacy_name}", base64.b64encode(blob).decode()]
            conn.execute(
                "UPDATE checkpoints SET checkpoint = %s, metadata = %s WHERE thread_id = %s"
                " AND checkpoint_ns = %s AND checkpoint_id = %s",
                (Jsonb(checkpoint), Jsonb(metadata), *where),
            )


def cipher_names(postgres_url: str) -> set[str]:
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT type FROM checkpoint_blobs UNION SELECT type FROM checkpoint_writes"
            f" UNION SELECT checkpoint -> '{SEALED_VALUES}' ->> 0 FROM checkpoints"
            " UNION SELECT metadata -> '$enc' ->> 0 FROM checkpoints"
        ).fetchall()
    return {r[0].partition("+")[2] for r in rows if r[0] and "+" in r[0]}


async def test_unbound_rows_still_read_and_keys_rotate_binds_them(
    open_durable: Any, postgres_db_url: str
) -> None:
    """The migration of rows encrypted before binding: they read as they are, and `threadline
    keys rotate` (with the same key) binds each to its place."""
    serde = make_serializer(KEY)
    ring = serde.cipher  # type: ignore[attr-defined]
    async with open_durable(serde=serde) as saver:
        graph, first, second = await two_threads(saver)
        before = (await graph.aget_state(first)).values
    unbind_every_value(postgres_db_url, ring)
    assert cipher_names(postgres_db_url) == {"aes"}
    async with open_durable(serde=make_serializer(KEY)) as saver:
        graph = offline_agent(saver)
        assert (await graph.aget_state(first)).values == before
        assert await stale_rows(saver, ring) > 0
        await rotate(saver, ring, 5, lambda what, n: None)
        assert await stale_rows(saver, ring) == 0
        assert cipher_names(postgres_db_url) == {ring.current_name}
        assert (await graph.aget_state(first)).values == before
        await take_turns(graph, first, ["after the migration"])
    copy_first_write(postgres_db_url, thread_of(first), thread_of(second))  # bound now
    async with open_durable(serde=make_serializer(KEY)) as saver:
        with pytest.raises(MisplacedValueError):
            await offline_agent(saver).aget_state(second)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_a_sealed_title_copied_onto_another_record_is_refused(
    backend: str, backend_stores: Any
) -> None:
    settings = settings_for(
        aes_key=KEY, checkpointer=backend, model="fake", **backend_stores[backend]
    )
    keys = [f"h.record-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
    async with open_keeper(settings) as (keeper, _):
        runner = TurnRunner(keeper.graph, keeper=keeper)
        for key in keys:
            await runner.invoke(
                {"messages": [HumanMessage(f"the plan of {key}")]},
                {"configurable": {"thread_id": key}},
            )
        copy = (
            "UPDATE threadline_threads SET title ="
            " (SELECT title FROM threadline_threads WHERE thread_key = {p})"
            " WHERE thread_key = {p}"
        )
        if backend == "postgres":
            with psycopg.connect(backend_stores[backend]["postgres_url"], autocommit=True) as c:
                c.execute(copy.format(p="%s"), keys)
        else:
            with sqlite3.connect(backend_stores[backend]["sqlite_path"]) as c:
                c.execute(copy.format(p="?"), keys)
        record = await keeper.records.aget_thread_record(keys[0])
        assert record is not None and record.title == f"the plan of {keys[0]}"
        with pytest.raises(MisplacedValueError):
            await keeper.records.aget_thread_record(keys[1])


@pytest.mark.parametrize("encrypted", [True, False], ids=["aes", "control-without-key"])
async def test_a_value_copied_to_another_thread_in_sqlite_is_refused(
    encrypted: bool, tmp_path: Path
) -> None:
    path = tmp_path / "threads.sqlite"
    async with aiosqlite.connect(str(path)) as conn:
        saver = SqliteSaver(conn, serde=make_serializer(KEY if encrypted else None))
        graph, first, second = await two_threads(saver)
        with sqlite3.connect(path) as copy:
            query = (
                "SELECT checkpoint_id, task_id, idx, type, value FROM writes"
                " WHERE thread_id = ? AND channel = 'messages' ORDER BY checkpoint_id LIMIT 1"
            )
            *_, type_tag, blob = copy.execute(query, (thread_of(first),)).fetchone()
            checkpoint_id, task_id, idx, *_ = copy.execute(query, (thread_of(second),)).fetchone()
            copy.execute(
                "UPDATE writes SET type = ?, value = ? WHERE thread_id = ? AND checkpoint_id = ?"
                " AND task_id = ? AND idx = ?",
                (type_tag, blob, thread_of(second), checkpoint_id, task_id, idx),
            )
        if encrypted:
            with pytest.raises(MisplacedValueError):
                await graph.aget_state(second)
        else:
            state = await graph.aget_state(second)
            assert "secret plan" in state.values["messages"][0].content


async def test_an_archive_object_copied_under_another_thread_is_not_restored(
    backend_stores: Any, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    settings = settings_for(
        aes_key=KEY,
        checkpointer="postgres",
        model="fake",
        archive_url=f"file://{archive}",
        **backend_stores["postgres"],
    )
    keys = [f"h.archived-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
    async with open_keeper(settings) as (keeper, _):
        runner = TurnRunner(keeper.graph, keeper=keeper)
        for key in keys:
            await runner.invoke(
                {"messages": [HumanMessage(f"the plan of {key}")]},
                {"configurable": {"thread_id": key}},
            )
            record = await keeper.records.aget_thread_record(key)
            assert record is not None and await keeper.archive_thread(record)
        first, second = (archive / object_name(key) for key in keys)
        second.write_bytes(first.read_bytes())  # the first thread's object, as the second's
        with pytest.raises(ArchiveError):
            await keeper.restore(keys[1])
        await keeper.restore(keys[0])  # in its place it restores
        state = await keeper.graph.aget_state({"configurable": {"thread_id": keys[0]}})
        assert state.values["messages"][0].content == f"the plan of {keys[0]}"


async def test_over_http_a_refused_value_is_a_500_that_says_why(
    served: Any, backend_stores: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with served("postgres", aes_key=KEY) as client:
        for thread in ("first", "second"):
            for text in (f"the {thread} thread's secret plan", "and more"):
                turn = {
                    "input": {"messages": [{"type": "human", "content": text}]},
                    "config": {"configurable": {"thread_id": thread}},
                }
                assert (await client.post("/agent/invoke", json=turn)).status_code == 200
    with psycopg.connect(backend_stores["postgres"]["postgres_url"]) as conn:
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT thread_key FROM threadline_threads ORDER BY created_at"
            ).fetchall()
        ]
    copy_first_write(backend_stores["postgres"]["postgres_url"], *keys)
    async with served("postgres", aes_key=KEY) as client:  # a fresh process: nothing cached
        refused = await client.get("/threads/second")
    assert refused.status_code == 500
    assert "MisplacedValueError" in refused.json()["detail"]
    assert "secret plan" not in refused.text and "secret plan" not in caplog.text
