"""`FirestoreSaver`: threadline's checkpoint saver on Cloud Firestore (native mode).

Not the community `langgraph-checkpoint-firestore`, which has no serializer hook, no
transactions and ambiguous `{thread}_{ns}` document ids. Here document ids are unambiguous
(`layout`); a put is one transaction or batch (the checkpoint, its new channel values, its
receipts and the thread record's upsert), stored whole or not at all, with values too large
for a document split into chunks written ahead; values go through the deployment's
serializer, bound to their place (`codec`); delta histories are read in few queries and
survive pruning (`history`); `maintenance` deletes, copies and prunes; `thread_records`
keeps receipts and records.

Indexes: all reads use Firestore's automatic single-field indexes, except `delete_for_runs`
and `list(None)`, which query the `<prefix>_checkpoints` collection group (enable the
collection-group scope of the single-field index on `run` in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from google.cloud.firestore import AsyncClient, AsyncTransaction
from google.cloud.firestore_v1.base_query import FieldFilter
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from threadline.checkpointers.delta import DEFAULT_HISTORY_CACHE_BYTES, HistoryCache
from threadline.checkpointers.firestore.codec import PAYLOAD, Codec
from threadline.checkpointers.firestore.history import delta_history
from threadline.checkpointers.firestore.layout import (
    BLOBS,
    CHECKPOINTS,
    CHUNKS,
    RECEIPTS,
    WRITES,
    Doc,
    checkpoint_id_of,
    fit,
    prefix_range,
    thread_doc_id,
)
from threadline.checkpointers.firestore.maintenance import ThreadMaintenance
from threadline.checkpointers.firestore.store import Store, Write, fits, parts, split
from threadline.checkpointers.firestore.thread_records import FirestoreRecords, bookkeeping
from threadline.checkpointers.loopbridge import LoopBoundSyncMethods
from threadline.checkpointers.receipts import Receipt, receipts_in
from threadline.checkpointers.records import ThreadRecord, WrittenRecords, record_in
from threadline.checkpointers.rows import SaverCall, checkpoint_config, next_version
from threadline.checkpointers.serde import metadata_matches

DEFAULT_COLLECTION_PREFIX = "threadline"


class FirestoreSaver(
    LoopBoundSyncMethods, FirestoreRecords, ThreadMaintenance, BaseCheckpointSaver[str]
):
    """Checkpoints, receipts and thread records in Firestore collections named by
    `collection_prefix`; any number of savers may share them (no lock is held)."""

    def __init__(
        self,
        project: str | None = None,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
        *,
        client: AsyncClient | None = None,
        serde: SerializerProtocol | None = None,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
    ) -> None:
        super().__init__(serde=serde)
        self.histories = HistoryCache(history_cache_bytes)
        self._owns_client = client is None
        self.client = client or AsyncClient(project=project)
        self.store = Store(self.client, collection_prefix)
        self.codec = Codec(self.serde)
        self.written_records = WrittenRecords()
        with contextlib.suppress(RuntimeError):  # outside a loop: sync calls need one set
            self.loop = asyncio.get_running_loop()

    @classmethod
    @asynccontextmanager
    async def from_settings(
        cls,
        project: str | None = None,
        collection_prefix: str = DEFAULT_COLLECTION_PREFIX,
        *,
        serde: SerializerProtocol | None = None,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
    ) -> AsyncIterator[FirestoreSaver]:
        """A saver on its own client (credentials and the emulator, `FIRESTORE_EMULATOR_HOST`,
        from Google's usual sources), closed on exit."""
        saver = cls(
            project, collection_prefix, serde=serde, history_cache_bytes=history_cache_bytes
        )
        try:
            yield saver
        finally:
            await saver.aclose()

    async def setup(self) -> None:
        """Nothing to create: Firestore makes collections on first write."""

    async def aclose(self) -> None:
        """Close the client's gRPC channel if this saver made the client (`client.close()`
        closes only its HTTP transport)."""
        if not self._owns_client:
            return
        self.client.close()
        api = getattr(self.client, "_firestore_api_internal", None)  # made on first use
        if api is not None:
            await api.transport.close()

    def get_next_version(self, current: str | None, channel: None) -> str:
        return next_version(current)

    # ----------------------------------------------------------------- writes

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        put = self._put_parts(config, checkpoint, metadata, new_versions)
        ahead, final = split(put.chunks, put.values, put.owners, len(put.receipts) + 1)
        if put.receipts or put.record is not None:
            await self.store.commit(ahead, final, partial(self._bookkeeping, put))
            if put.receipts:
                await self._purge_receipts(put.thread_id)
        else:
            await self.store.commit(ahead, final)
        return checkpoint_config(put.thread_id, put.ns, checkpoint["id"])

    def _put_parts(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> _PutParts:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        md = dict(get_serializable_checkpoint_metadata(config, metadata))
        (cid, doc), blobs = self.codec.checkpoint_docs(
            thread_id, ns, configurable.get("checkpoint_id"), checkpoint, md, new_versions
        )
        tdoc = thread_doc_id(thread_id)
        fitted_blobs = [(i, fit(BLOBS, i, d, PAYLOAD)) for i, d in blobs]
        fitted = fit(CHECKPOINTS, cid, doc, PAYLOAD)
        chunks_ref = self.store.sub(tdoc, CHUNKS)
        return _PutParts(
            thread_id=thread_id,
            ns=ns,
            chunks=[
                (chunks_ref.document(i), c)
                for f in [*(f for _, f in fitted_blobs), fitted]
                for i, c in f.chunks.items()
            ],
            values=[(self.store.sub(tdoc, BLOBS).document(i), f.doc) for i, f in fitted_blobs],
            owners=[(self.store.sub(tdoc, CHECKPOINTS).document(cid), fitted.doc)],
            receipts=receipts_in(md, ns, checkpoint["id"]),
            record=record_in(md),
        )

    async def _bookkeeping(self, put: _PutParts, transaction: AsyncTransaction) -> list[Write]:
        return await bookkeeping(
            self.store, transaction, put.thread_id, put.receipts, put.record, self.written_records
        )

    async def aput_many(self, calls: Sequence[SaverCall]) -> None:
        """A turn's puts and writes in one transaction when one commit holds them (each
        document once, at most one put keeping receipts or a record), else one after another,
        in order."""
        puts = [self._put_parts(*args) for method, args in calls if method == "aput"]
        writes = [self._writes_parts(*args) for method, args in calls if method == "aput_writes"]
        kept = [p for p in puts if p.receipts or p.record is not None]
        final = [w for p in puts for w in (*p.values, *p.owners)]
        final += [w for task in writes if task.replace for w in task.owners]
        checked = [w for task in writes if not task.replace for w in task.owners]
        extra = len(checked) + sum(len(p.receipts) + 1 for p in kept)
        paths = [ref.path for ref, _ in [*final, *checked]]
        if len(kept) > 1 or len(set(paths)) < len(paths) or not fits(final, extra):
            for method, args in calls:
                await (self.aput if method == "aput" else self.aput_writes)(*args)
            return
        ahead = [w for p in puts for w in p.chunks] + [w for task in writes for w in task.chunks]

        async def decide(transaction: AsyncTransaction) -> list[Write]:
            found = await self._missing(checked, transaction) if checked else []
            if kept:
                found += await self._bookkeeping(kept[0], transaction)
            return found

        await self.store.commit(ahead, final, decide)
        if kept and kept[0].receipts:
            await self._purge_receipts(kept[0].thread_id)

    async def _purge_receipts(self, thread_id: str) -> None:
        """Forget the thread's expired receipts (a turn that writes receipts does it, as the
        other savers do in its commit; a live receipt is never touched)."""
        receipts = self.store.sub(thread_doc_id(thread_id), RECEIPTS)
        expired = receipts.where(filter=FieldFilter("expires_at", "<=", time.time())).select([])
        await self.store.write_many([(s.reference, None) async for s in expired.stream()])

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """A task's writes, together; a write already stored under its (task, idx) stays,
        unless every write is a special channel (errors, interrupts), which replace."""
        task = self._writes_parts(config, writes, task_id, task_path)
        ahead, final = split(task.chunks, [], task.owners)
        if task.replace:
            await self.store.commit(ahead, final)
            return
        # Writes that exist stay: a transaction writes only the missing ones (one per part
        # when a task has more writes than a commit holds).
        await self.store.write_many(ahead)
        for part in parts(final):
            await self.store.commit([], [], partial(self._missing, part))

    def _writes_parts(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> _WritesParts:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        tdoc = thread_doc_id(thread_id)
        docs = self.codec.write_docs(
            thread_id,
            configurable.get("checkpoint_ns", ""),
            configurable["checkpoint_id"],
            task_id,
            task_path,
            writes,
        )
        fitted = [(i, fit(WRITES, i, d, PAYLOAD)) for i, d in docs]
        chunks_ref, writes_ref = self.store.sub(tdoc, CHUNKS), self.store.sub(tdoc, WRITES)
        return _WritesParts(
            chunks=[(chunks_ref.document(i), c) for _, f in fitted for i, c in f.chunks.items()],
            owners=[(writes_ref.document(i), f.doc) for i, f in fitted],
            replace=all(channel in WRITES_IDX_MAP for channel, _ in writes),
        )

    async def _missing(self, writes: list[Write], transaction: AsyncTransaction) -> list[Write]:
        """Those of `writes` whose document does not exist, read in `transaction`."""
        refs = [ref for ref, _ in writes]
        present = {
            snap.reference.path
            async for snap in self.client.get_all(refs, transaction=transaction)
            if snap.exists
        }
        return [(ref, d) for ref, d in writes if ref.path not in present]

    # ------------------------------------------------------------------ reads

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        checkpoints = self.store.sub(thread_doc_id(thread_id), CHECKPOINTS)
        if checkpoint_id := get_checkpoint_id(config):
            cid = checkpoint_id_of(ns, checkpoint_id)
            doc = await self.store.get(checkpoints.document(cid))
            return await self._tuple(thread_id, cid, doc) if doc is not None else None
        low, high = prefix_range(ns)
        newest = (
            checkpoints.where(filter=FieldFilter("key", ">=", low))
            .where(filter=FieldFilter("key", "<", high))
            .order_by("key", direction="DESCENDING")
            .limit(1)
        )
        async for snap in newest.stream():
            return await self._tuple(thread_id, snap.id, snap.to_dict() or {})
        return None

    async def _tuple(self, thread_id: str, cid: str, doc: Doc) -> CheckpointTuple:
        """A checkpoint document with its channel values and pending writes."""
        tdoc = thread_doc_id(thread_id)
        (whole,) = await self.store.whole(tdoc, CHECKPOINTS, [(cid, doc)])
        blob_ref = self.store.sub(tdoc, BLOBS)
        blobs = await self.store.get_many(
            [blob_ref.document(i) for i in self.codec.blob_ids(whole)]
        )
        writes = await self.store.in_range(
            self.store.sub(tdoc, WRITES), prefix_range(doc["ns"], doc["cid"])
        )
        return self.codec.checkpoint_tuple(
            thread_id,
            whole,
            await self.store.whole(tdoc, BLOBS, list(blobs.items())),
            await self.store.whole(tdoc, WRITES, writes),
        )

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Newest first; metadata filters are checked after decryption (`metadata_matches`),
        so they work alike with encryption on."""
        before_id = get_checkpoint_id(before) if before else None
        emitted = 0
        pushed = limit if not filter else None
        for thread_id, cid, doc in await self._listed(config, before_id, pushed):
            if limit is not None and emitted >= limit:
                return
            if before_id is not None and doc["cid"] >= before_id:
                continue
            if filter:
                (whole,) = await self.store.whole(
                    thread_doc_id(thread_id), CHECKPOINTS, [(cid, doc)]
                )
                if not metadata_matches(self.codec.metadata(thread_id, whole), filter):
                    continue
            yield await self._tuple(thread_id, cid, doc)
            emitted += 1

    async def _listed(
        self, config: RunnableConfig | None, before_id: str | None, limit: int | None = None
    ) -> list[tuple[str, str, Doc]]:
        """(thread, id, document) of checkpoints newest first: of a namespace, of a thread,
        or of every thread (at most `limit` of a namespace)."""
        if config is None:
            found = [
                (str((s.to_dict() or {})["thread"]), s.id, s.to_dict() or {})
                async for s in self.store.group(CHECKPOINTS).stream()
            ]
            return sorted(found, key=lambda f: f[2]["cid"], reverse=True)
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoints = self.store.sub(thread_doc_id(thread_id), CHECKPOINTS)
        ns = configurable.get("checkpoint_ns")
        if checkpoint_id := configurable.get("checkpoint_id"):
            cid = checkpoint_id_of(ns or "", checkpoint_id)
            doc = await self.store.get(checkpoints.document(cid))
            return [(thread_id, cid, doc)] if doc is not None else []
        if ns is None:
            docs = await self.store.in_range(checkpoints)
            return [
                (thread_id, i, d) for i, d in sorted(docs, key=lambda f: f[1]["cid"], reverse=True)
            ]
        low, high = prefix_range(ns)
        if before_id is not None:
            high = checkpoint_id_of(ns, before_id)
        query = (
            checkpoints.where(filter=FieldFilter("key", ">=", low))
            .where(filter=FieldFilter("key", "<", high))
            .order_by("key", direction="DESCENDING")
        )
        if limit is not None:
            query = query.limit(limit)
        return [(thread_id, s.id, s.to_dict() or {}) async for s in query.stream()]

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        if not channels:
            return {}
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id is None:
            latest = await self.aget_tuple(config)
            if latest is None:
                return {ch: {"writes": []} for ch in channels}
            checkpoint_id = latest.checkpoint["id"]
        return await delta_history(
            self.store, self.codec, thread_id, ns, checkpoint_id, channels, self.histories
        )


__all__ = ["DEFAULT_COLLECTION_PREFIX", "FirestoreSaver"]


@dataclass
class _PutParts:
    """A checkpoint as documents: chunks and new channel values (nothing refers to them yet),
    the checkpoint itself, and the receipts and thread record its commit keeps."""

    thread_id: str
    ns: str
    chunks: list[Write]
    values: list[Write]
    owners: list[Write]
    receipts: list[Receipt]
    record: ThreadRecord | None


@dataclass
class _WritesParts:
    """A task's writes as documents; unless they `replace`, existing ones stay."""

    chunks: list[Write]
    owners: list[Write]
    replace: bool
