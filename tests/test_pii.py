"""Sensitive values never reach storage in clear: every strategy, every store, every place.

A turn carries an email, a Visa test number, a phone number, an IBAN and an `sk-` key in its
content; the model (the real `ChatOpenAI` client against the local stub) calls a tool with some
of them as arguments, and the tool's result and the final reply hold the others. Then the raw
stores (every Postgres row, every Redis value, inflated too, the SQLite files), the archive, the
export and the logs are searched for each value.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import random
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from redis import Redis

from tests.fixtures.openai_stub import Reply, ToolCall
from tests.fixtures.server import settings_for
from tests.test_erasure import postgres_holds, sqlite_holds
from tests.test_observability import moved, scrape
from threadline.assembly import make_graph, protector
from threadline.checkpointers import open_checkpointer
from threadline.retention.archive import object_name
from threadline.server.export import export_lines
from threadline.server.turns import TurnRunner

STRATEGIES = ["redact", "mask", "hash", "block"]
BACKENDS = ["sqlite", "postgres", "redis", "tiered"]


def luhn_visa(rng: random.Random) -> str:
    """A Visa-shaped test number with a valid Luhn check digit."""
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(
        (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
        for i, d in enumerate(reversed(digits))
    )
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def gb_iban(rng: random.Random) -> str:
    """A GB IBAN with valid check digits (ISO 13616 mod 97)."""
    bban = "WEST" + "".join(str(rng.randrange(10)) for _ in range(14))
    numeric = "".join(str(int(c, 36)) for c in bban + "GB00")
    text = f"GB{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def canaries() -> dict[str, str]:
    """Values unique to this run (the Redis Stack server is shared by the session)."""
    rng = random.Random()
    run = uuid.uuid4().hex[:10]
    return {
        "email": f"ada.{run}@example.com",
        "credit_card": luhn_visa(rng),
        "phone": f"+1 415 555 01{rng.randrange(100):02d}",
        "iban": gb_iban(rng),
        "secret": f"sk-{run}abcdefghijklmnopqrstu",
    }


def inflated(value: bytes) -> list[bytes]:
    """The value, and what it holds if it is compressed."""
    out = [value]
    for inflate in (zlib.decompress, gzip.decompress):
        with contextlib.suppress(Exception):
            out.append(inflate(value))
    return out


def decoded_strings(document: Any) -> list[bytes]:
    """Every string in a JSON document that is base64, decoded."""
    if isinstance(document, dict):
        return [b for v in document.values() for b in decoded_strings(v)]
    if isinstance(document, list):
        return [b for v in document for b in decoded_strings(v)]
    if isinstance(document, str) and len(document) >= 8:
        with contextlib.suppress(ValueError):
            return [base64.b64decode(document, validate=True)]
    return []


def redis_values(url: str) -> list[bytes]:
    client = Redis.from_url(url)
    values: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "hash":
            values += list(client.hgetall(key).values())
        elif kind == "zset":
            values += client.zrange(key, 0, -1)
        elif kind == "ReJSON-RL":
            document = client.json().get(key)
            values.append(json.dumps(document).encode())
            values += decoded_strings(document)  # the stock saver's blobs are base64 in JSON
        else:
            values.append(client.dump(key) or b"")
    return [v for value in values for v in inflated(value)]


def found_in_stores(backend: str, backend_stores: Any, value: str) -> list[str]:
    needle = value.encode()
    where = []
    store = backend_stores[backend]
    if "postgres_url" in store and postgres_holds(store["postgres_url"], needle):
        where.append("postgres")
    if "redis_url" in store and any(needle in v for v in redis_values(store["redis_url"])):
        where.append("redis")
    if "sqlite_path" in store and sqlite_holds(store["sqlite_path"], needle):
        where.append("sqlite")
    return where


@contextlib.asynccontextmanager
async def agent(settings: Any) -> AsyncIterator[tuple[TurnRunner, Any]]:
    @tool
    def send_card(card: str, email: str) -> str:
        """Send the card details to the email address."""
        return f"sent to {email}; confirmation by phone {VALUES['phone']}, IBAN {VALUES['iban']}"

    async with open_checkpointer(settings) as saver:
        graph = make_graph(saver, settings, tools=[send_card])
        runner = TurnRunner(graph, protector=protector(settings))
        yield runner, saver


VALUES: dict[str, str] = {}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_detected_value_is_stored_in_clear(
    backend: str,
    strategy: str,
    backend_stores: Any,
    openai_stub: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    VALUES.clear()
    VALUES.update(canaries())
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer=backend,
        pii_strategy=strategy,
        pii_key="pii-test-key",
        **backend_stores[backend],
    ).check()
    thread = f"pii-{uuid.uuid4().hex[:8]}"
    config: Any = {"configurable": {"thread_id": thread}}
    text = (
        f"Please send my card {VALUES['credit_card']} to {VALUES['email']}; "
        f"my phone is {VALUES['phone']}, IBAN {VALUES['iban']}, and my key is {VALUES['secret']}"
    )
    openai_stub.enqueue(
        Reply.tools(
            ToolCall("send_card", {"card": VALUES["credit_card"], "email": VALUES["email"]})
        )
    )
    caplog.set_level(logging.DEBUG)
    async with agent(settings) as (runner, saver):
        if strategy == "block":
            with pytest.raises(HTTPException) as refused:
                await runner.invoke({"messages": [HumanMessage(text)]}, config)
            assert refused.value.status_code == 422
            for name in ("credit_card", "email", "iban", "phone", "secret"):
                assert name in str(refused.value.detail)
            assert await saver.aget_tuple(config) is None  # nothing stored
            assert not openai_stub.requests  # nor sent
        else:
            result = await runner.invoke({"messages": [HumanMessage(text)]}, config)
            # This turn's model saw the originals (the user's request works)...
            assert VALUES["email"] in json.dumps(openai_stub.requests[0].body)
            assert [m.type for m in result["messages"]] == ["human", "ai", "tool", "ai"]
            state = await runner.graph.aget_state(config)
            stored = state.values["messages"]
            assert len(stored) == 4
            assert state.values["telemetry"]["pii_detections"]["email"] >= 3
            exported = "".join(export_lines("jsonl", {"thread_id": thread}, state.values))
            # ... and later turns see what was stored.
            await runner.invoke({"messages": [HumanMessage("thanks")]}, config)
            assert VALUES["email"] not in json.dumps(openai_stub.requests[-1].body)
            from threadline.audit import AuditLog
            from threadline.retention import ThreadKeeper
            from threadline.retention.archive import open_archive

            archive = open_archive(f"file://{tmp_path / 'archive'}")
            keeper = ThreadKeeper(runner.graph, archive, AuditLog(tmp_path / "audit.jsonl"))
            record = await keeper.records.aget_thread_record(thread)
            assert record is not None and await keeper.archive_thread(record)
            stored_object = (tmp_path / "archive" / object_name(thread)).read_bytes()
            archived = stored_object.split(b"\n", 2)[2]  # the payload after the header
            for name, value in VALUES.items():
                assert value not in exported, name
                assert not any(value.encode() in v for v in inflated(archived)), name
    logs = caplog.text
    for name, value in VALUES.items():
        assert found_in_stores(backend, backend_stores, value) == [], name
        assert value not in logs, name


async def test_the_model_can_be_kept_from_seeing_the_values(
    openai_stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer="memory",
        pii_strategy="redact",
        pii_model_sees="redacted",
        pii_custom={"employee_id": r"EMP-\d{6}"},
    ).check()
    async with open_checkpointer(settings) as saver:
        runner = TurnRunner(
            make_graph(saver, settings), protector=protector(settings), model_sees_protected=True
        )
        text = "I am EMP-123456, write to ada@example.com"
        await runner.invoke(
            {"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": "t"}}
        )
    sent = json.dumps(openai_stub.requests[0].body)
    assert "ada@example.com" not in sent and "EMP-123456" not in sent
    assert "[EMAIL]" in sent and "[EMPLOYEE_ID]" in sent


def test_bad_pii_settings_stop_start_up() -> None:
    from threadline.settings import SettingsError

    with pytest.raises(SettingsError, match="unknown PII entities"):
        settings_for(model="fake", pii_strategy="redact", pii_entities="email,passport").check()
    with pytest.raises(SettingsError, match="PII_CUSTOM"):
        settings_for(model="fake", pii_strategy="redact", pii_custom={"x": "("}).check()
    with pytest.raises(SettingsError, match="needs THREADLINE_PII_KEY"):
        settings_for(model="fake", pii_strategy="hash").check()


async def test_over_http_block_is_a_422_and_titles_are_protected(served: Any) -> None:
    from tests.test_erasure import turn

    async with served("sqlite", pii_strategy="block") as client:
        before = await scrape(client)
        refused = await client.post("/agent/invoke", json=turn("b", "card 4111 1111 1111 1111"))
        assert refused.status_code == 422 and "credit_card" in refused.text
        assert (await client.get("/threads/b")).status_code == 404
    async with served("sqlite", pii_strategy="redact") as client:
        stored = await client.post("/agent/invoke", json=turn("r", "mail ada@example.com"))
        assert stored.status_code == 200
        shown = (await client.get("/threads/r")).json()
        assert shown["record"]["title"] == "mail [EMAIL]"
        assert shown["messages"][0]["content"] == "mail [EMAIL]"
        renamed = await client.patch(
            "/threads/r",
            json={"title": "for bob@example.com", "metadata": {"to": "bob@example.com"}},
        )
        assert renamed.json()["title"] == "for [EMAIL]"
        assert renamed.json()["metadata"] == {"to": "[EMAIL]"}
        after = await scrape(client)
    # the stored turn's address, the title's and the metadata's; the refused turn stored none
    assert moved(before, after, "threadline_pii_detections_total", entity="email") == 3
    assert moved(before, after, "threadline_turns_total", outcome="invalid") == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_search_finds_the_values_when_protection_is_off(
    backend: str, backend_stores: Any, openai_stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the canary search above: the same turn stored without protection leaves
    every value where the search looks (in clear: no key is set)."""
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    VALUES.clear()
    VALUES.update(canaries())
    settings = settings_for(
        model="openai:gpt-4o-mini", checkpointer=backend, **backend_stores[backend]
    ).check()
    config: Any = {"configurable": {"thread_id": f"pii-off-{uuid.uuid4().hex[:8]}"}}
    text = " ".join(f"{name} {value}" for name, value in VALUES.items())
    async with agent(settings) as (runner, _):
        await runner.invoke({"messages": [HumanMessage(text)]}, config)
    for name, value in VALUES.items():
        assert found_in_stores(backend, backend_stores, value), name
