"""What removes or copies a thread's items: delete a thread, delete runs, copy a thread,
prune, and retention's cut to one checkpoint.

Deletions go child first where a reader could notice (a kept checkpoint is made whole on its
own before its ancestors go; see `history.freeze`); a copy writes checkpoints last.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from threadline.checkpointers.dynamodb.bookkeeping import record_from, record_keys
from threadline.checkpointers.dynamodb.codec import (
    PAYLOAD,
    Codec,
    cid_of,
    ns_of,
    parent_of,
    versions_of,
)
from threadline.checkpointers.dynamodb.history import SharedHistories, freeze
from threadline.checkpointers.dynamodb.layout import (
    BLOB,
    CHECKPOINT,
    CHUNK,
    RECEIPT,
    RECORD_SK,
    WRITE,
    Item,
    S,
    blob_sk,
    blob_version,
    blobs_prefix,
    checkpoints_prefix,
    fit,
    key_of,
    s,
    thread_pk,
    writes_prefix,
)
from threadline.checkpointers.dynamodb.table import Table

PRUNE_STRATEGIES = ("keep_latest", "delete")
RUN_IDS_PER_SCAN = 90  # an IN list takes at most 100 operands


class ThreadMaintenance:
    """Mixin of `DynamoDBSaver`: the sync operations that delete or copy items."""

    table: Table
    codec: Codec
    histories: SharedHistories

    def delete_thread(self, thread_id: str) -> None:
        """Everything of the thread: checkpoints, values, writes, receipts, its record and
        the record's copy in its tenant's listing."""
        self.histories.forget([str(thread_id)])
        pk = thread_pk(str(thread_id))
        record = self.table.get(pk, RECORD_SK)
        keys = list(self.table.query(pk, keys_only=True))
        if record is not None:
            keys.append(record_keys(record_from(record))[1])
        self.table.delete_keys(keys)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the runs' checkpoints with their writes, and the values only they used;
        their children lose their parent. Runs are found by a scan of the table (checkpoints
        carry the run id, or its keyed MAC with encryption on)."""
        run_ids = [str(r) for r in run_ids]
        if not run_ids:
            return
        keys = self.codec.sealer.run_id_keys(run_ids)
        doomed: list[Item] = []
        if keys is None:  # an encrypting serde without an index key: open every metadata
            for item in self._scan_checkpoints():
                if self.codec.metadata(self.table.whole(item)).get("run_id") in run_ids:
                    doomed.append(item)
        else:
            for start in range(0, len(keys), RUN_IDS_PER_SCAN):
                part = keys[start : start + RUN_IDS_PER_SCAN]
                names = {f":r{i}": S(k) for i, k in enumerate(part)}
                doomed += self.table.scan(
                    f"#kind = :c AND #run IN ({', '.join(names)})",
                    {":c": S(CHECKPOINT), **names},
                    {"#kind": "kind", "#run": "run"},
                )
        by_place: dict[tuple[str, str], set[str]] = defaultdict(set)
        for item in doomed:
            by_place[(item["pk"]["S"], ns_of(item))].add(cid_of(item))
        self.histories.forget(sorted({pk[2:] for pk, _ in by_place}))
        for (pk, ns), cids in by_place.items():
            items = list(self.table.query(pk, prefix=checkpoints_prefix(ns)))
            self._drop_checkpoints(pk, ns, items, cids)

    def _scan_checkpoints(self) -> Iterator[Item]:
        return self.table.scan("#kind = :c", {":c": S(CHECKPOINT)}, {"#kind": "kind"})

    def _drop_checkpoints(self, pk: str, ns: str, items: list[Item], doomed: set[str]) -> None:
        """Delete the `doomed` of a namespace's checkpoint `items` with their writes and the
        values no other checkpoint uses; the checkpoints whose parent went lose it."""
        kept = [i for i in items if cid_of(i) not in doomed]
        for child in [i for i in kept if parent_of(i) in doomed]:
            self.table.call(
                "update_item",
                Key=key_of(child),
                UpdateExpression="REMOVE #parent",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#parent": "parent"},
            )
        used = {(ch, v) for i in kept for ch, v in versions_of(i).items()}
        freed = {(ch, v) for i in items if cid_of(i) in doomed for ch, v in versions_of(i).items()}
        blobs = self.table.get_many(
            [{"pk": S(pk), "sk": S(blob_sk(ns, ch, v))} for ch, v in freed - used], join=False
        )
        writes = [
            w
            for cid in sorted(doomed)
            for w in self.table.query(pk, prefix=writes_prefix(ns, cid), keys_only=True)
        ]
        gone = [i for i in items if cid_of(i) in doomed]
        self.table.delete_owned([*gone, *writes, *blobs])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy checkpoints, values and writes, each value re-encrypted for its place in
        the target; checkpoints go last, so the copy never shows one missing its values.
        Receipts and the record stay with the source (a copy is a new thread)."""
        source, target = str(source_thread_id), str(target_thread_id)
        self.histories.forget([target])
        early: list[Item] = []
        checkpoints: list[Item] = []
        for item in self.table.query(thread_pk(source)):
            kind = s(item, "kind")
            if kind not in (CHECKPOINT, BLOB, WRITE):
                continue
            fitted = fit(self.codec.moved(self.table.whole(item), target), PAYLOAD)
            early += fitted.chunks
            (checkpoints if kind == CHECKPOINT else early).append(fitted.item)
        self.table.put_many(early)
        self.table.put_many(checkpoints)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`delete`: every checkpoint, value and write of the threads (receipts and records
        stay). `keep_latest`: each namespace's latest checkpoint alone, whole on its own
        (delta channels keep their history in it, see `history.freeze`)."""
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        if strategy not in PRUNE_STRATEGIES:
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        for thread_id in [str(t) for t in thread_ids]:
            pk = thread_pk(thread_id)
            if strategy == "delete":
                self.histories.forget([thread_id])
                self._delete_checkpoints(pk)
                continue
            latest: dict[str, str] = {}
            for item in self.table.query(pk, prefix=checkpoints_prefix(), keys_only=True):
                latest[ns_of(item)] = max(latest.get(ns_of(item), ""), cid_of(item))
            self._keep_only(pk, set(latest.values()))

    def delete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        """Retention's cut (see `KeepsThreadRecords.adelete_checkpoints`): the record stays,
        receipts go."""
        pk = thread_pk(thread_key)
        if keep is None:
            self.histories.forget([thread_key])
            self._delete_checkpoints(pk)
        else:
            self._keep_only(pk, {keep})
        receipts = self.table.query(pk, prefix=RECEIPT + "[", keys_only=True)
        self.table.delete_keys(list(receipts))

    def _delete_checkpoints(self, pk: str) -> None:
        kinds = (CHECKPOINT, BLOB, WRITE, CHUNK)
        items = self.table.query(pk, keys_only=True)
        self.table.delete_keys([i for i in items if s(i, "kind") in kinds])

    def _keep_only(self, pk: str, keep: set[str]) -> None:
        """Delete a thread's checkpoints but those in `keep`, which are first made whole on
        their own (frozen, parentless); then every write and value the kept ones do not use."""
        by_ns: dict[str, list[Item]] = defaultdict(list)
        for item in self.table.query(pk, prefix=checkpoints_prefix()):
            by_ns[ns_of(item)].append(item)
        for ns, items in by_ns.items():
            kept = [i for i in items if cid_of(i) in keep]
            for item in kept:
                whole = self.table.whole(item)
                frozen = fit(freeze(self.table, self.codec, whole, self.histories), PAYLOAD)
                self.table.put_many([*frozen.chunks, frozen.item])
            used = {(ch, v) for i in kept for ch, v in versions_of(i).items()}
            blobs = self.table.query(pk, prefix=blobs_prefix(ns), keys_only=True)
            writes = self.table.query(pk, prefix=writes_prefix(ns), keys_only=True)
            self.histories.forget([pk[2:]])  # after freezing, which the cache sped up
            self.table.delete_owned(
                [
                    *(i for i in items if cid_of(i) not in keep),
                    *(w for w in writes if cid_of(w) not in keep),
                    *(b for b in blobs if blob_version(b["sk"]["S"]) not in used),
                ]
            )
