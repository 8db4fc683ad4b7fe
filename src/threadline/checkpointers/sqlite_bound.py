"""The stock async SQLite saver's reads and writes, each value bound to its place.

LangGraph's `AsyncSqliteSaver` decodes rows inside its own methods, where no place is known;
these are the same statements and the same results, with `dumps_at`/`loads_at` (see
`places`) instead of the bare serializer. Without a key they are byte-identical to the stock
paths. A checkpoint's whole state is one blob here (channel values included), bound to its
checkpoint; a write is bound to its checkpoint, task, index and channel. Metadata stays the
stock plaintext JSON: the record and receipt triggers read it (see `sqlite`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite._delta import (
    DELTA_STAGE1_SQL,
    build_delta_stage2_sql,
    step_walk_with_row,
)
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.checkpoint.sqlite.utils import pending_writes_sql, search_where

from threadline.checkpointers.places import Place, checkpoint_place, write_place
from threadline.checkpointers.rows import SaverCall, checkpoint_config
from threadline.checkpointers.serde import dumps_at, loads_at

INSERT_CHECKPOINT_SQL = (
    "INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id,"
    " parent_checkpoint_id, type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
WRITE_COLUMNS = (
    "(thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value)"
)
UPSERT_WRITES_SQL = (
    f"INSERT OR REPLACE INTO writes {WRITE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_WRITES_SQL = (
    f"INSERT OR IGNORE INTO writes {WRITE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
CHECKPOINT_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
)
BY_ID_SQL = (
    f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints"
    " WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
)
LATEST_SQL = (
    f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints"
    " WHERE thread_id = ? AND checkpoint_ns = ? ORDER BY checkpoint_id DESC LIMIT 1"
)


def sqlite_checkpoint_place(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> Place:
    """A whole checkpoint blob (the SQLite layout keeps channel values inside it)."""
    return checkpoint_place("checkpoint", thread_id, checkpoint_ns, checkpoint_id)


class _AtPlace:
    """A serializer reading one value from one place: for the stock walk step, which decodes
    one checkpoint row per call."""

    def __init__(self, serde: SerializerProtocol, place: Place) -> None:
        self._serde, self._place = serde, place

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        return loads_at(self._serde, data, self._place)


class BoundSqlitePaths(AsyncSqliteSaver):
    """`AsyncSqliteSaver` whose values are bound to their places."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        await self.aput_many([("aput", (config, checkpoint, metadata, new_versions))])
        return checkpoint_config(
            str(config["configurable"]["thread_id"]),
            config["configurable"]["checkpoint_ns"],
            checkpoint["id"],
        )

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self.aput_many([("aput_writes", (config, writes, task_id, task_path))])

    async def aput_many(self, calls: Sequence[SaverCall]) -> None:
        """Puts and writes, in order, in one transaction: a turn is stored all or nothing."""
        statements = [self._statement(method, *args) for method, args in calls]
        await self.setup()
        async with self.lock, self.conn.cursor() as cur:
            try:
                for sql, rows in statements:
                    await cur.executemany(sql, rows)
                await self.conn.commit()
            except BaseException:
                await self.conn.rollback()
                raise

    def _statement(self, method: str, *args: Any) -> tuple[str, list[tuple[Any, ...]]]:
        if method == "aput":
            return INSERT_CHECKPOINT_SQL, [self._checkpoint_row(*args)]
        if method == "aput_writes":
            return self._write_rows(*args)
        raise ValueError(f"not a saver write: {method}")

    def _checkpoint_row(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[Any, ...]:
        configurable = config["configurable"]
        thread_id, checkpoint_ns = str(configurable["thread_id"]), configurable["checkpoint_ns"]
        place = sqlite_checkpoint_place(thread_id, checkpoint_ns, checkpoint["id"])
        type_tag, blob = dumps_at(self.serde, checkpoint, place)
        stored_metadata = json.dumps(
            get_checkpoint_metadata(config, metadata), ensure_ascii=False
        ).encode("utf-8", "ignore")
        return (
            thread_id,
            checkpoint_ns,
            checkpoint["id"],
            configurable.get("checkpoint_id"),
            type_tag,
            blob,
            stored_metadata,
        )

    def _write_rows(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> tuple[str, list[tuple[Any, ...]]]:
        configurable = config["configurable"]
        key = (
            str(configurable["thread_id"]),
            str(configurable["checkpoint_ns"]),
            str(configurable["checkpoint_id"]),
        )
        rows = []
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            place = write_place(*key, task_id, idx, channel)
            rows.append(
                (*key, task_id, task_path, idx, channel, *dumps_at(self.serde, value, place))
            )
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        return (UPSERT_WRITES_SQL if upsert else INSERT_WRITES_SQL), rows

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        await self.setup()
        configurable = config["configurable"]
        thread_id, checkpoint_ns = (
            str(configurable["thread_id"]),
            configurable.get("checkpoint_ns", ""),
        )
        async with self.lock, self.conn.cursor() as cur:
            if checkpoint_id := get_checkpoint_id(config):
                await cur.execute(BY_ID_SQL, (thread_id, checkpoint_ns, checkpoint_id))
            else:
                await cur.execute(LATEST_SQL, (thread_id, checkpoint_ns))
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(pending_writes_sql(self._has_task_path), tuple(row[:3]))
            return self._tuple(row, await cur.fetchall())

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        await self.setup()
        where, params = search_where(config, filter, before)
        query = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints {where} ORDER BY checkpoint_id DESC"
        if limit is not None:
            query += " LIMIT ?"
            params = (*params, limit)
        async with self.lock, self.conn.execute(query, params) as cur, self.conn.cursor() as wcur:
            async for row in cur:
                await wcur.execute(pending_writes_sql(self._has_task_path), tuple(row[:3]))
                yield self._tuple(row, await wcur.fetchall())

    def _tuple(self, row: Sequence[Any], write_rows: Iterable[Any]) -> CheckpointTuple:
        thread_id, checkpoint_ns, checkpoint_id, parent_id, type_tag, blob, metadata = row
        key = (thread_id, checkpoint_ns, checkpoint_id)
        place = sqlite_checkpoint_place(*key)
        writes = [
            (
                task_id,
                channel,
                loads_at(self.serde, (type_, value), write_place(*key, task_id, idx, channel)),
            )
            for task_id, channel, type_, value, _, idx in sorted(
                write_rows, key=lambda r: writes_sort_key(r[4], r[0], r[5])
            )
        ]
        return CheckpointTuple(
            checkpoint_config(*key),
            loads_at(self.serde, (type_tag, blob), place),
            cast(CheckpointMetadata, json.loads(metadata) if metadata is not None else {}),
            checkpoint_config(thread_id, checkpoint_ns, parent_id) if parent_id else None,
            writes,
        )

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """The stock two-stage walk (see `AsyncSqliteSaver.aget_delta_channel_history`), each
        row decoded at its place."""
        if not channels:
            return {}
        channels = list(channels)
        await self.setup()
        thread_id = str(config["configurable"]["thread_id"])
        checkpoint_ns = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            target = await self.aget_tuple(config)
            if target is None:
                return {ch: {"writes": []} for ch in channels}
            checkpoint_id = target.config["configurable"]["checkpoint_id"]
        chain_by_ch: dict[str, list[str]] = {ch: [] for ch in channels}
        seed_val_by_ch: dict[str, Any] = {}
        walk_state: dict[str, Any] = {}
        seeded: set[str] = set()
        async with self.lock, self.conn.cursor() as cur:
            await cur.execute(
                DELTA_STAGE1_SQL,
                (thread_id, checkpoint_ns, checkpoint_id, thread_id, checkpoint_ns),
            )
            async for cid, type_tag, blob in cur:
                at_place = _AtPlace(
                    self.serde, sqlite_checkpoint_place(thread_id, checkpoint_ns, cid)
                )
                if step_walk_with_row(
                    cid=cid,
                    type_tag=type_tag,
                    blob=blob,
                    target_id=checkpoint_id,
                    serde=at_place,
                    chain_by_ch=chain_by_ch,
                    seed_val_by_ch=seed_val_by_ch,
                    walk_state=walk_state,
                    seeded=seeded,
                    channels=channels,
                ):
                    break
            with_chain = [ch for ch in channels if chain_by_ch[ch]]
            stage2_sql = build_delta_stage2_sql(
                has_task_path=self._has_task_path,
                chain_lens=[len(chain_by_ch[ch]) for ch in with_chain],
            )
            rows: list[Any] = []
            if stage2_sql:
                params: list[Any] = []
                for ch in with_chain:
                    params.extend([thread_id, checkpoint_ns, ch, *chain_by_ch[ch]])
                await cur.execute(stage2_sql, params)
                rows = list(await cur.fetchall())
        by_place: dict[tuple[str, str], list[Any]] = {}
        for row in rows:
            by_place.setdefault((row[1], row[0]), []).append(row)
        result: dict[str, DeltaChannelHistory] = {}
        for ch in channels:
            collected: list[tuple[str, str, Any]] = []
            for cid in reversed(chain_by_ch[ch]):  # the chain is newest first
                found = sorted(
                    by_place.get((ch, cid), []), key=lambda r: writes_sort_key(r[6], r[2], r[3])
                )
                collected.extend(
                    (
                        task_id,
                        ch,
                        loads_at(
                            self.serde,
                            (type_tag, value),
                            write_place(thread_id, checkpoint_ns, cid, task_id, idx, ch),
                        ),
                    )
                    for _, _, task_id, idx, type_tag, value, _ in found
                )
            entry: DeltaChannelHistory = {"writes": collected}
            if ch in seeded:
                entry["seed"] = seed_val_by_ch[ch]
            result[ch] = entry
        return result
