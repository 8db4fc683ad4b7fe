"""Threads that belong to a user and have a record, on every backend.

The record is written by the turn (same write as its checkpoint), listed newest first with a
stable cursor, changed by PATCH, and gone with the thread; another user's thread is a 404.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from langchain_core.messages import messages_from_dict

from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import BACKENDS

LONG_FIRST = (
    "Please plan a three day walking tour of the Lake District with gentle climbs, "
    "pubs for lunch and a rest day"
)


def turn(thread_id: str, text: str, **configurable: Any) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id, **configurable}},
    }


async def post_turn(client: httpx.AsyncClient, thread: str, text: str, user: str | None) -> None:
    headers = {"X-User-Id": user} if user else {}
    response = await client.post("/agent/invoke", json=turn(thread, text), headers=headers)
    assert response.status_code == 200, response.text


async def all_pages(
    client: httpx.AsyncClient, params: dict[str, Any], between: Any = None
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.get(
            "/threads", params=params if cursor is None else {**params, "cursor": cursor}
        )
        assert page.status_code == 200, page.text
        seen.extend(page.json()["threads"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return seen
        if between is not None:
            await between()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_records_are_kept_listed_and_removed_on_every_backend(
    backend: str, served: Any, openai_stub: OpenAIStub
) -> None:
    run = uuid.uuid4().hex[:8]  # the Redis Stack server is shared by the session
    ada, bob = f"ada-{run}", f"bob-{run}"
    async with served(backend) as client:
        first = f"walk-{run}"
        await post_turn(client, first, LONG_FIRST, ada)
        await post_turn(client, first, "and a map", ada)
        for n in range(5):
            await post_turn(client, f"ada-{n}-{run}", f"question {n}", ada)
        await post_turn(client, f"bob-{run}", "hello", bob)

        thread = (await client.get(f"/threads/{first}")).json()
        record = thread["record"]
        assert record["user_id"] == ada and record["message_count"] == 4
        assert (
            record["title"]
            == "Please plan a three day walking tour of the Lake District with gentle climbs,"
        )
        assert len(record["title"]) <= 80 and record["created_at"] < record["updated_at"]

        listed = await all_pages(client, {"user_id": ada, "limit": 2})
        assert [r["thread_id"] for r in listed] == [
            *(f"ada-{n}-{run}" for n in reversed(range(5))),
            first,
        ]
        assert [r["thread_id"] for r in await all_pages(client, {"user_id": bob})] == [f"bob-{run}"]

        # Turns landing between pages move threads to the front, never duplicate or drop
        # the ones not yet listed.
        async def touch_listed() -> None:
            await post_turn(client, f"ada-4-{run}", "again", ada)

        paged = await all_pages(client, {"user_id": ada, "limit": 2}, between=touch_listed)
        ids = [r["thread_id"] for r in paged]
        assert len(ids) == len(set(ids)) == 6

        renamed = await client.patch(
            f"/threads/{first}", json={"title": "Lakes", "metadata": {"pinned": True}}
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["title"] == "Lakes" and renamed.json()["metadata"] == {"pinned": True}
        answered = await client.post(
            "/agent/invoke", json=turn(first, "one more"), headers={"X-User-Id": ada}
        )
        assert answered.json()["output"]["thread"]["title"] == "Lakes"  # the record as stored
        kept = (await client.get(f"/threads/{first}")).json()["record"]
        assert kept["title"] == "Lakes" and kept["metadata"] == {"pinned": True}
        assert kept["message_count"] == 6

        assert (await client.delete(f"/threads/{first}")).status_code == 200
        left = [r["thread_id"] for r in await all_pages(client, {"user_id": ada})]
        assert first not in left and len(left) == 5


async def test_another_users_thread_is_not_there(served: Any, openai_stub: OpenAIStub) -> None:
    async with served("sqlite") as client:
        await post_turn(client, "diary", "my secret plans", "ada")
        calls = len(openai_stub.completions)
        as_bob = {"X-User-Id": "bob"}
        turn_by_bob = await client.post(
            "/agent/invoke", json=turn("diary", "let me in"), headers=as_bob
        )
        by_config = await client.post("/agent/invoke", json=turn("diary", "me too", user_id="bob"))
        reads = [
            await client.get("/threads/diary", headers=as_bob),
            await client.get("/threads/diary/history", headers=as_bob),
            await client.patch("/threads/diary", json={"title": "mine"}, headers=as_bob),
            await client.delete("/threads/diary", headers=as_bob),
        ]
        assert [r.status_code for r in [turn_by_bob, by_config, *reads]] == [404] * 6
        assert len(openai_stub.completions) == calls
        assert (await client.get("/threads", params={"user_id": "bob"})).json()["threads"] == []

        owner = (await client.get("/threads/diary", headers={"X-User-Id": "ada"})).json()
        assert owner["record"]["title"] == "my secret plans"
        tenant_wide = await client.get("/threads/diary")  # names no user: the whole tenant
        assert tenant_wide.status_code == 200


async def test_identity_sources_that_disagree_are_422(served: Any) -> None:
    async with served("memory") as client:
        users = await client.post(
            "/agent/invoke", json=turn("t", "hi", user_id="ada"), headers={"X-User-Id": "bob"}
        )
        threads = await client.post(
            "/agent/invoke", json=turn("t", "hi"), headers={"X-Thread-Id": "other"}
        )
        bad_user = await client.post("/agent/invoke", json=turn("t", "hi", user_id="a b"))
        listing = await client.get(
            "/threads", params={"user_id": "ada"}, headers={"X-User-Id": "b"}
        )
        cursor = await client.get("/threads", params={"cursor": "not-a-cursor"})
        patch = await client.patch("/threads/t", json={"metadata": {"x": "y" * 5000}})
        extra = await client.patch("/threads/t", json={"user_id": "mallory"})
    for response in (users, threads, bad_user, listing, cursor, patch, extra):
        assert response.status_code == 422, response.text
    assert "user_id" in users.json()["detail"] and "thread_id" in threads.json()["detail"]


async def test_a_thread_exports_whole_as_jsonl_and_markdown(served: Any) -> None:
    async with served("postgres") as client:
        await post_turn(client, "trip", "pack the tent", "ada")
        await post_turn(client, "trip", "and the stove", "ada")
        jsonl = await client.get("/threads/trip/export", params={"format": "jsonl"})
        markdown = await client.get(
            "/threads/trip/export", params={"format": "markdown"}, headers={"X-User-Id": "ada"}
        )
        hidden = await client.get("/threads/trip/export", headers={"X-User-Id": "bob"})
        bad = await client.get("/threads/trip/export", params={"format": "pdf"})
    assert jsonl.status_code == markdown.status_code == 200
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    head, *lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert head["record"]["user_id"] == "ada" and head["record"]["title"] == "pack the tent"
    messages = messages_from_dict(lines)
    assert [m.type for m in messages] == ["human", "ai", "human", "ai"]
    assert [m.content for m in messages][::2] == ["pack the tent", "and the stove"]
    assert markdown.text.startswith("# pack the tent")
    assert "**human**: and the stove" in markdown.text
    assert (hidden.status_code, bad.status_code) == (404, 422)


async def test_listings_and_owners_stay_inside_their_tenant(served: Any) -> None:
    """The same user id in two tenants is two users; a tenant lists only its own threads."""
    alpha = {"Authorization": "Bearer key-a", "X-User-Id": "ada"}
    beta = {"Authorization": "Bearer key-b", "X-User-Id": "ada"}
    async with served("postgres", api_keys="key-a:alpha,key-b:beta") as client:
        for headers, thread in ((alpha, "plans"), (beta, "plans"), (beta, "other")):
            response = await client.post(
                "/agent/invoke",
                json=turn(thread, f"{thread} of {headers['Authorization']}"),
                headers=headers,
            )
            assert response.status_code == 200, response.text
        listed_a = (await client.get("/threads", headers=alpha)).json()["threads"]
        listed_b = (await client.get("/threads", params={"user_id": "ada"}, headers=beta)).json()
        plans_a = (await client.get("/threads/plans", headers=alpha)).json()
    assert [r["thread_id"] for r in listed_a] == ["plans"]
    assert [r["thread_id"] for r in listed_b["threads"]] == ["other", "plans"]
    assert plans_a["record"]["title"] == "plans of Bearer key-a"
