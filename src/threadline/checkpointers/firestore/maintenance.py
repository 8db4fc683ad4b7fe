"""What removes or copies a thread's documents: delete a thread, delete runs, copy a thread,
prune, and retention's cut to one checkpoint.

Deletions go child first where a reader could notice (a kept checkpoint is made whole on its
own before its ancestors go; see `history.freeze`); a copy writes checkpoints last. Chunks go
with their owner (and a rewritten owner's stale chunks with the rewrite).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from google.cloud.firestore_v1.base_query import FieldFilter

from threadline.checkpointers.delta import HistoryCache
from threadline.checkpointers.firestore.codec import PAYLOAD, Codec, versions_of
from threadline.checkpointers.firestore.history import freeze
from threadline.checkpointers.firestore.layout import (
    BLOBS,
    CHECKPOINTS,
    CHUNKS,
    RECEIPTS,
    WRITES,
    Doc,
    blob_id_of,
    chunk_owner,
    chunk_refs,
    fit,
    owner_of_chunk,
    prefix_range,
    thread_doc_id,
)
from threadline.checkpointers.firestore.store import Store, Write

PRUNE_STRATEGIES = ("keep_latest", "delete")
RUN_IDS_PER_QUERY = 30  # an `in` filter takes at most 30 values


class ThreadMaintenance:
    """Mixin of `FirestoreSaver`: the operations that delete or copy documents."""

    store: Store
    codec: Codec
    histories: HistoryCache  # decoded histories of this process: forgotten where changed

    async def adelete_thread(self, thread_id: str) -> None:
        """Everything of the thread: checkpoints, values, writes, chunks, receipts and its
        record (the thread document)."""
        self.histories.forget_thread(str(thread_id))
        tdoc = thread_doc_id(str(thread_id))
        await self._delete_all(tdoc, (CHECKPOINTS, WRITES, BLOBS, CHUNKS, RECEIPTS))
        await self.store.write_many([(self.store.thread(tdoc), None)])

    async def _delete_all(self, tdoc: str, kinds: Sequence[str]) -> None:
        for kind in kinds:
            collection = self.store.sub(tdoc, kind)
            found = await self.store.in_range(collection, keys_only=True)
            await self.store.write_many((collection.document(i), None) for i, _ in found)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the runs' checkpoints with their writes, and the values only they used;
        their children lose their parent. Runs are found by a collection-group query on the
        run id (its keyed MAC with encryption on), or by opening every metadata when the
        serializer encrypts without an index key."""
        run_ids = [str(r) for r in run_ids]
        if not run_ids:
            return
        keys = self.codec.sealer.run_id_keys(run_ids)
        group = self.store.group(CHECKPOINTS)
        doomed: list[Doc] = []
        if keys is None:
            async for snap in group.stream():
                doc = snap.to_dict() or {}
                (whole,) = await self.store.whole(
                    thread_doc_id(doc["thread"]), CHECKPOINTS, [(snap.id, doc)]
                )
                if self.codec.metadata(doc["thread"], whole).get("run_id") in run_ids:
                    doomed.append(doc)
        else:
            for start in range(0, len(keys), RUN_IDS_PER_QUERY):
                part = keys[start : start + RUN_IDS_PER_QUERY]
                query = group.where(filter=FieldFilter("run", "in", part))
                doomed += [s.to_dict() or {} async for s in query.stream()]
        by_place: dict[tuple[str, str], set[str]] = defaultdict(set)
        for doc in doomed:
            by_place[(doc["thread"], doc["ns"])].add(doc["cid"])
        for (thread_id, ns), cids in by_place.items():
            await self._drop_checkpoints(thread_id, ns, cids)

    async def _drop_checkpoints(self, thread_id: str, ns: str, doomed: set[str]) -> None:
        """Delete the `doomed` checkpoints of a namespace with their writes and the values no
        other checkpoint uses; the checkpoints whose parent went lose it."""
        self.histories.forget_thread(thread_id)
        tdoc = thread_doc_id(thread_id)
        checkpoints = self.store.sub(tdoc, CHECKPOINTS)
        items = await self.store.in_range(checkpoints, prefix_range(ns))
        kept = [(i, d) for i, d in items if d["cid"] not in doomed]
        gone = [(i, d) for i, d in items if d["cid"] in doomed]
        detached: list[Write] = [
            (checkpoints.document(i), {**d, "parent": None})
            for i, d in kept
            if d.get("parent") in doomed
        ]
        used = {(ch, v) for _, d in kept for ch, v in versions_of(d).items()}
        freed = {(ch, v) for _, d in gone for ch, v in versions_of(d).items()} - used
        writes = self.store.sub(tdoc, WRITES)
        gone_writes = [
            w
            for cid in sorted(doomed)
            for w in await self.store.in_range(writes, prefix_range(ns, cid))
        ]
        blobs = self.store.sub(tdoc, BLOBS)
        gone_blobs = list(
            (
                await self.store.get_many(
                    [blobs.document(blob_id_of(ns, ch, v)) for ch, v in sorted(freed)]
                )
            ).items()
        )
        await self.store.write_many(detached)
        await self._delete_owned(tdoc, {CHECKPOINTS: gone, WRITES: gone_writes, BLOBS: gone_blobs})

    async def _delete_owned(
        self,
        tdoc: str,
        gone: dict[str, list[tuple[str, Doc]]],
        rewritten: dict[str, list[tuple[str, Doc]]] | None = None,
    ) -> None:
        """Delete `gone` documents (kind → (id, data)), checkpoints first, then their chunks
        and the stale chunks of `rewritten` documents (kind → (id, data as now stored))."""
        deletes: list[tuple[object, None]] = []
        for kind in (CHECKPOINTS, WRITES, BLOBS):
            collection = self.store.sub(tdoc, kind)
            deletes += [(collection.document(i), None) for i, _ in gone.get(kind, [])]
        await self.store.write_many(deletes)  # type: ignore[arg-type]
        owners = {chunk_owner(k, i) for k, docs in gone.items() for i, _ in docs}
        current = {
            chunk_owner(k, i): {c for ids in chunk_refs(k, i, d).values() for c in ids}
            for k, docs in (rewritten or {}).items()
            for i, d in docs
        }
        if not owners and not current:
            return
        chunks = self.store.sub(tdoc, CHUNKS)
        stale = [
            i
            for i, _ in await self.store.in_range(chunks, keys_only=True)
            if owner_of_chunk(i) in owners
            or (owner_of_chunk(i) in current and i not in current[owner_of_chunk(i)])
        ]
        await self.store.write_many((chunks.document(i), None) for i in stale)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy checkpoints, values and writes, each value re-encrypted for its place in
        the target; checkpoints go last, so the copy never shows one missing its values.
        Receipts and the record stay with the source (a copy is a new thread)."""
        source, target = str(source_thread_id), str(target_thread_id)
        self.histories.forget_thread(target)
        src, dst = thread_doc_id(source), thread_doc_id(target)
        early: list[Write] = []
        last: list[Write] = []
        for kind in (BLOBS, WRITES, CHECKPOINTS):
            docs = await self.store.in_range(self.store.sub(src, kind))
            wholes = await self.store.whole(src, kind, docs)
            for (i, _), whole in zip(docs, wholes, strict=True):
                fitted = fit(kind, i, self.codec.moved(kind, whole, source, target), PAYLOAD)
                early += [
                    (self.store.sub(dst, CHUNKS).document(c), d) for c, d in fitted.chunks.items()
                ]
                (last if kind == CHECKPOINTS else early).append(
                    (self.store.sub(dst, kind).document(i), fitted.doc)
                )
        await self.store.write_many([*early, *last])

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`delete`: every checkpoint, value and write of the threads (receipts and records
        stay). `keep_latest`: each namespace's latest checkpoint alone, whole on its own
        (delta channels keep their history in it, see `history.freeze`)."""
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        if strategy not in PRUNE_STRATEGIES:
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        for thread_id in [str(t) for t in thread_ids]:
            self.histories.forget_thread(thread_id)
            tdoc = thread_doc_id(thread_id)
            if strategy == "delete":
                await self._delete_all(tdoc, (CHECKPOINTS, WRITES, BLOBS, CHUNKS))
                continue
            latest: dict[str, str] = {}
            checkpoints = self.store.sub(tdoc, CHECKPOINTS)
            for _, doc in await self.store.in_range(checkpoints, fields=["ns", "cid"]):
                latest[doc["ns"]] = max(latest.get(doc["ns"], ""), doc["cid"])
            await self._keep_only(thread_id, set(latest.values()))

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        """Retention's cut (see `KeepsThreadRecords.adelete_checkpoints`): the record stays,
        receipts go."""
        self.histories.forget_thread(thread_key)
        tdoc = thread_doc_id(thread_key)
        if keep is None:
            await self._delete_all(tdoc, (CHECKPOINTS, WRITES, BLOBS, CHUNKS))
        else:
            await self._keep_only(thread_key, {keep})
        await self._delete_all(tdoc, (RECEIPTS,))

    async def _keep_only(self, thread_id: str, keep: set[str]) -> None:
        """Delete a thread's checkpoints but those in `keep`, which are first made whole on
        their own (frozen, parentless); then every write and value the kept ones do not use."""
        tdoc = thread_doc_id(thread_id)
        checkpoints = self.store.sub(tdoc, CHECKPOINTS)
        items = await self.store.in_range(checkpoints)
        kept = [(i, d) for i, d in items if d["cid"] in keep]
        rewritten: list[tuple[str, Doc]] = []
        for i, doc in kept:
            (whole,) = await self.store.whole(tdoc, CHECKPOINTS, [(i, doc)])
            frozen = fit(
                CHECKPOINTS, i, await freeze(self.store, self.codec, thread_id, whole), PAYLOAD
            )
            chunks = self.store.sub(tdoc, CHUNKS)
            await self.store.write_many(
                [
                    *((chunks.document(c), d) for c, d in frozen.chunks.items()),
                    (checkpoints.document(i), frozen.doc),
                ]
            )
            rewritten.append((i, frozen.doc))
        kept_places = {(d["ns"], d["cid"]) for _, d in kept}
        used = {(d["ns"], ch, v) for _, d in kept for ch, v in versions_of(d).items()}
        writes = await self.store.in_range(self.store.sub(tdoc, WRITES), fields=["ns", "cid"])
        blobs = await self.store.in_range(self.store.sub(tdoc, BLOBS), fields=["ns", "ch", "ver"])
        await self._delete_owned(
            tdoc,
            {
                CHECKPOINTS: [(i, d) for i, d in items if d["cid"] not in keep],
                WRITES: [(i, d) for i, d in writes if (d["ns"], d["cid"]) not in kept_places],
                BLOBS: [(i, d) for i, d in blobs if (d["ns"], d["ch"], d["ver"]) not in used],
            },
            {CHECKPOINTS: rewritten},
        )
