"""Firestore I/O for the saver: collection references, whole documents (chunks joined),
id-range queries, and commits that respect Firestore's per-commit limits.

A commit too large for one request writes what nothing refers to yet (chunks, then new
channel values) in earlier batches and the referring documents last, so a reader never sees
a document whose parts are missing; what an early batch wrote is referenced by nothing if
the final commit fails, and goes with its thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from google.cloud.firestore import AsyncClient, AsyncTransaction, async_transactional
from google.cloud.firestore_v1.async_collection import AsyncCollectionReference
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.async_query import AsyncQuery
from google.cloud.firestore_v1.base_query import FieldFilter

from threadline.checkpointers.firestore.layout import (
    CHUNKS,
    COMMIT_BUDGET,
    MAX_WRITES,
    Doc,
    chunk_refs,
    doc_size,
    joined,
)

Write = tuple[AsyncDocumentReference, Doc]  # a document set whole
DELETE = None  # in a `Write`'s place: delete the document


class Store:
    """One deployment's collections (`<prefix>_threads` and its subcollections)."""

    def __init__(self, client: AsyncClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def threads(self) -> AsyncCollectionReference:
        return self.client.collection(f"{self.prefix}_threads")

    def thread(self, thread_doc_id: str) -> AsyncDocumentReference:
        return self.threads().document(thread_doc_id)

    def sub(self, thread_doc_id: str, kind: str) -> AsyncCollectionReference:
        return self.thread(thread_doc_id).collection(f"{self.prefix}_{kind}")

    def group(self, kind: str) -> AsyncQuery:
        """Every thread's `kind` subcollection (prefixed: other deployments' stay apart)."""
        return self.client.collection_group(f"{self.prefix}_{kind}")

    # ------------------------------------------------------------------ reads

    async def get(self, ref: AsyncDocumentReference) -> Doc | None:
        snap = await ref.get()
        return snap.to_dict() if snap.exists else None

    async def get_many(self, refs: Sequence[AsyncDocumentReference]) -> dict[str, Doc]:
        """id → data of the documents that exist (refs of one collection)."""
        if not refs:
            return {}
        return {
            snap.id: snap.to_dict() or {}
            async for snap in self.client.get_all(list(refs))
            if snap.exists
        }

    async def in_range(
        self,
        collection: AsyncCollectionReference,
        bounds: tuple[str, str] | None = None,
        *,
        keys_only: bool = False,
        fields: Sequence[str] | None = None,
    ) -> list[tuple[str, Doc]]:
        """(id, data) of the documents whose id is in [low, high), ascending."""
        query: Any = collection
        if bounds is not None:
            low, high = bounds
            query = query.where(filter=FieldFilter("__name__", ">=", collection.document(low)))
            query = query.where(filter=FieldFilter("__name__", "<", collection.document(high)))
        if keys_only or fields is not None:
            query = query.select(list(fields or []))
        return [(snap.id, snap.to_dict() or {}) async for snap in query.stream()]

    async def whole(self, thread: str, kind: str, docs: Sequence[tuple[str, Doc]]) -> list[Doc]:
        """`docs` (id, data) of a `kind` collection with their chunked values joined, in one
        read of every chunk they need."""
        wanted = {owner: chunk_refs(kind, owner, doc) for owner, doc in docs}
        ids = [i for refs in wanted.values() for ids in refs.values() for i in ids]
        if not ids:
            return [doc for _, doc in docs]
        chunks = self.sub(thread, CHUNKS)
        found = await self.get_many([chunks.document(i) for i in ids])
        return [
            joined(
                doc,
                {
                    name: [found[i]["d"] if i in found else None for i in ids]
                    for name, ids in wanted[owner].items()
                },
            )
            for owner, doc in docs
        ]

    # ----------------------------------------------------------------- writes

    async def write_many(self, writes: Iterable[tuple[AsyncDocumentReference, Doc | None]]) -> None:
        """Sets and deletes (data None) in as many batches as Firestore's limits need, in
        order: each batch commits whole, the sequence is not atomic."""
        batch, count, size = self.client.batch(), 0, 0
        for ref, doc in writes:
            weight = doc_size(doc) if doc is not None else 200
            if count and (count >= MAX_WRITES or size + weight > COMMIT_BUDGET):
                await batch.commit()
                batch, count, size = self.client.batch(), 0, 0
            if doc is None:
                batch.delete(ref)
            else:
                batch.set(ref, doc)
            count, size = count + 1, size + weight
        if count:
            await batch.commit()

    async def commit(
        self,
        ahead: Sequence[Write],
        final: Sequence[Write],
        decide: Callable[[AsyncTransaction], Awaitable[Sequence[Write]]] | None = None,
    ) -> None:
        """Write `ahead` in earlier batches, then `final` in one commit: a transaction when
        `decide` must read first (it returns what to write besides `final`), else a batch."""
        await self.write_many(ahead)
        if decide is None:
            await self.write_many(final)  # within one commit's limits: see `split`
            return

        @async_transactional
        async def run(transaction: AsyncTransaction) -> None:
            extra = await decide(transaction)
            for ref, doc in [*final, *extra]:
                transaction.set(ref, doc)

        await run(self.client.transaction())


def split(
    chunks: Sequence[Write], values: Sequence[Write], owners: Sequence[Write], extra: int = 0
) -> tuple[list[Write], list[Write]]:
    """(ahead, final) for one commit of `owners` that refer to `values` and `chunks`: all
    together if one commit holds them (with `extra` more writes), else chunks first, and
    values too if still needed."""
    together = [*chunks, *values, *owners]
    if fits(together, extra):
        return [], together
    if fits([*values, *owners], extra):
        return list(chunks), [*values, *owners]
    return [*chunks, *values], list(owners)


def fits(writes: Sequence[Write], extra: int = 0) -> bool:
    size = sum(doc_size(doc) for _, doc in writes) + extra * 2_000
    return len(writes) + extra <= MAX_WRITES and size <= COMMIT_BUDGET


def parts(writes: Sequence[Write]) -> list[list[Write]]:
    """`writes` in consecutive groups that each fit one commit."""
    groups: list[list[Write]] = [[]]
    for write in writes:
        if groups[-1] and not fits([*groups[-1], write]):
            groups.append([])
        groups[-1].append(write)
    return [g for g in groups if g]
