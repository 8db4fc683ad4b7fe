"""With encryption on, a thread record's text — its title (the first message), readable thread
id and metadata — is stored encrypted on every backend, yet lists, reads, renames and exports
exactly as without encryption. Records stored in clear before encryption was on still read.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.test_erasure import turn
from tests.test_pii import found_in_stores
from threadline.checkpointers.records import ThreadRecord
from threadline.checkpointers.serde import make_serializer
from threadline.privacy.sealed_records import RecordSealer

BACKENDS = ["sqlite", "postgres", "tiered"]  # redis cannot encrypt at all
KEY = "sealed-records-key-0123456789abc"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_titles_thread_ids_and_metadata_are_not_stored_in_clear(
    served: Any, backend_stores: Any, backend: str
) -> None:
    canary = uuid.uuid4().hex[:12]
    title = f"Plan the {canary}title trip"
    thread_id = f"{canary}thread"
    note = f"{canary}note"
    async with served(backend, aes_key=KEY) as client:
        stored = await client.post("/agent/invoke", json=turn(thread_id, title))
        assert stored.status_code == 200, stored.text
        renamed = await client.patch(f"/threads/{thread_id}", json={"metadata": {"note": note}})
        assert renamed.status_code == 200, renamed.text
        listed = (await client.get("/threads")).json()["threads"]
        shown = (await client.get(f"/threads/{thread_id}")).json()["record"]
        exported = (await client.get(f"/threads/{thread_id}/export?format=jsonl")).text
    mine = [t for t in listed if t["thread_id"] == thread_id]
    assert [(t["title"], t["metadata"]) for t in mine] == [(title, {"note": note})]
    assert (shown["thread_id"], shown["title"], shown["metadata"]) == (
        thread_id,
        title,
        {"note": note},
    )
    assert title in exported and note in exported
    for text in (f"{canary}title", note):
        assert found_in_stores(backend, backend_stores, text) == [], text


def test_records_stored_in_clear_still_read() -> None:
    sealer = RecordSealer(make_serializer(KEY))
    clear = ThreadRecord("t", "", "t", None, "a title", 1.0, 1.0, 2, {"k": "v"})
    sealed = sealer.seal(clear)
    assert "a title" not in repr(sealed) and '"v"' not in repr(sealed)
    assert sealer.open(sealed) == clear
    assert sealer.open(clear) == clear
    assert RecordSealer(make_serializer(None)).seal(clear) == clear
