"""With encryption on, nothing that names a thread is stored in clear: the storage key is a
keyed hash of the tenant-scoped thread id, the record keeps the tenant as a keyed hash and its
text — title (the first message), readable thread id, metadata — encrypted. Yet threads list,
read, rename and export exactly as without encryption, on every backend that encrypts.

A store encrypted before ids were hashed is refused at start-up until `threadline keys rotate`
has moved its threads; then they read under their old ids.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from tests.fixtures.server import asgi_client, settings_for
from tests.test_erasure import turn
from tests.test_key_rotation import env_of
from tests.test_pii import found_in_stores
from threadline.assembly import open_keeper
from threadline.checkpointers.records import ThreadRecord
from threadline.checkpointers.sealed_records import RecordSealer
from threadline.checkpointers.serde import make_serializer
from threadline.server.turns import TurnRunner
from threadline.settings import SettingsError

BACKENDS = ["sqlite", "postgres", "tiered"]  # redis cannot encrypt at all
KEY = "sealed-records-key-0123456789abc"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_nothing_naming_a_thread_is_stored_in_clear(
    served: Any, backend_stores: Any, backend: str
) -> None:
    canary = uuid.uuid4().hex[:12]
    tenant, title, thread_id, note = (f"{canary}{part}" for part in ("tnt", "title", "th", "nb"))
    auth = {"Authorization": "Bearer key-one"}
    async with served(backend, aes_key=KEY, api_keys=f"key-one:{tenant}") as client:
        stored = await client.post(
            "/agent/invoke", json=turn(thread_id, f"Plan the {title} trip"), headers=auth
        )
        assert stored.status_code == 200, stored.text
        renamed = await client.patch(
            f"/threads/{thread_id}", json={"metadata": {"note": note}}, headers=auth
        )
        assert renamed.status_code == 200, renamed.text
        listed = (await client.get("/threads", headers=auth)).json()["threads"]
        shown = (await client.get(f"/threads/{thread_id}", headers=auth)).json()["record"]
        exported = (
            await client.get(f"/threads/{thread_id}/export?format=jsonl", headers=auth)
        ).text
        again = await client.post("/agent/invoke", json=turn(thread_id, "and again"), headers=auth)
        history = (await client.get(f"/threads/{thread_id}", headers=auth)).json()["messages"]
    assert [(t["thread_id"], t["title"], t["metadata"]) for t in listed] == [
        (thread_id, f"Plan the {title} trip", {"note": note})
    ]
    assert (shown["thread_id"], shown["metadata"]) == (thread_id, {"note": note})
    assert title in exported and note in exported
    assert again.status_code == 200 and len(history) == 4
    for text in (tenant, title, thread_id, note):
        assert found_in_stores(backend, backend_stores, text) == [], text


@pytest.mark.parametrize("backend", ["sqlite", "tiered"])
async def test_a_store_with_readable_ids_is_refused_until_rotation_moves_them(
    backend: str, backend_stores: Any, tmp_path: Path
) -> None:
    common = {
        "checkpointer": backend,
        "model": "fake",
        "aes_key": KEY,
        "archive_url": f"file://{tmp_path / 'archive'}",
        "audit_log_path": tmp_path / "audit.jsonl",
        **backend_stores[backend],
    }
    settings = settings_for(**common)
    threads = [f"legacy-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    async with open_keeper(settings) as (keeper, _):  # as stored before ids were hashed
        runner = TurnRunner(keeper.graph, keeper=keeper)
        for thread in threads:
            for text in (f"hello {thread}", "more"):
                config: Any = {"configurable": {"thread_id": thread}}
                await runner.invoke({"messages": [HumanMessage(text)]}, config)
        record = await keeper.records.aget_thread_record(threads[-1])
        assert record is not None and await keeper.archive_thread(record)
    assert found_in_stores(backend, backend_stores, threads[0])

    with pytest.raises(SettingsError, match="3 threads are stored under readable ids"):
        async with asgi_client(settings):
            pass
    rotated = subprocess.run(
        [str(Path(sys.executable).parent / "threadline"), "keys", "rotate", "--batch", "2"],
        env=env_of(common),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "moved 3 threads to hashed ids" in rotated.stdout
    for thread in threads:
        assert found_in_stores(backend, backend_stores, thread) == [], thread
    async with asgi_client(settings) as client:
        for thread in threads[:-1]:
            shown = (await client.get(f"/threads/{thread}")).json()
            assert [m["content"] for m in shown["messages"] if m["type"] == "human"] == [
                f"hello {thread}",
                "more",
            ]
        restored = await client.post(f"/threads/{threads[-1]}/restore")
        assert restored.status_code == 200, restored.text
        shown = (await client.get(f"/threads/{threads[-1]}")).json()
        assert shown["messages"][0]["content"] == f"hello {threads[-1]}"


def test_records_stored_in_clear_still_read() -> None:
    sealer = RecordSealer(make_serializer(KEY))
    clear = ThreadRecord("t", "", "t", None, "a title", 1.0, 1.0, 2, {"k": "v"})
    sealed = sealer.seal(clear)
    assert "a title" not in repr(sealed) and '"v"' not in repr(sealed)
    assert sealer.open(sealed) == clear
    assert sealer.open(clear) == clear
    assert RecordSealer(make_serializer(None)).seal(clear) == clear


def test_a_key_ring_needs_a_stable_id_key() -> None:
    ring = settings_for(checkpointer="memory", model="fake", aes_keys=f"b:{KEY},a:{KEY}")
    with pytest.raises(SettingsError, match="THREADLINE_ID_KEY"):
        ring.check()
