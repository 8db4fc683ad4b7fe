"""What an operator sees: /metrics moves by exactly what happened, requests carry ids, logs are
JSON lines with those ids and never message text."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.server import settings_for
from tests.test_erasure import turn
from threadline.locks import open_turn_locks


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_count_what_happened(
    served: Any, openai_stub: Any, postgres_db_url: str
) -> None:
    async with served("postgres", turn_lock_timeout_seconds=0.2) as client:
        before = await scrape(client)
        for text in ("one", "two"):
            assert (await client.post("/agent/invoke", json=turn("m", text))).status_code == 200
        keyed = {"Idempotency-Key": "k-1"}
        for _ in range(2):  # a retry: replayed, not run again
            response = await client.post("/agent/invoke", json=turn("m", "three"), headers=keyed)
            assert response.status_code == 200
        openai_stub.fail_next(3)  # ChatOpenAI retries twice
        failed = await client.post("/agent/invoke", json=turn("m", "four"))
        assert failed.status_code == 502
        settings = settings_for(checkpointer="postgres", postgres_url=postgres_db_url)
        async with open_turn_locks(settings) as locks, locks.hold(["m"], 1):
            busy = await client.post("/agent/invoke", json=turn("m", "five"))
            assert busy.status_code == 409
        after = await scrape(client)

    assert moved(before, after, "threadline_turns_total", outcome="ok") == 3
    assert moved(before, after, "threadline_turns_total", outcome="replayed") == 1
    assert moved(before, after, "threadline_turns_total", outcome="model_error") == 1
    assert moved(before, after, "threadline_turns_total", outcome="conflict") == 1
    assert moved(before, after, "threadline_turn_duration_seconds_count") == 3
    assert moved(before, after, "threadline_model_duration_seconds_count") == 3 + 1
    assert moved(before, after, "threadline_context_tokens_count") == 3
    assert moved(before, after, "threadline_thread_lock_wait_seconds_count") >= 5
    for (name, labels), _ in after.items():  # bounded labels: no thread, user or text
        assert "m" not in dict(labels).values() and "three" not in str(labels), name


async def test_metrics_are_behind_the_api_key_unless_published(served: Any) -> None:
    async with served("memory", api_keys="key-a:acme") as client:
        assert (await client.get("/metrics")).status_code == 401
        authorized = await client.get("/metrics", headers={"Authorization": "Bearer key-a"})
        assert authorized.status_code == 200
    async with served("memory", api_keys="key-a:acme", metrics_public=True) as client:
        assert (await client.get("/metrics")).status_code == 200


async def test_every_response_carries_a_request_id(served: Any) -> None:
    async with served("memory") as client:
        given = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = await client.get("/healthz")
        assert len(made.headers["x-request-id"]) == 32
        odd = await client.get("/healthz", headers={"X-Request-Id": "no spaces please"})
        assert odd.headers["x-request-id"] != "no spaces please"


def test_serve_logs_json_lines_with_request_ids_and_no_text(
    server_process: Any, openai_stub: Any, tmp_path: Any
) -> None:
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    server = server_process(
        {
            "THREADLINE_CHECKPOINTER": "sqlite",
            "THREADLINE_SQLITE_PATH": str(tmp_path / "threads.sqlite"),
            "THREADLINE_LOG_FORMAT": "json",
            "THREADLINE_MODEL": "openai:gpt-4o-mini",
            **openai_stub.env(),
        }
    )
    headers = {"X-Request-Id": "req-42"}
    ok = httpx.post(f"{server.url}/agent/invoke", json=turn("t", canary), headers=headers)
    assert ok.status_code == 200
    openai_stub.fail_next(3)
    failed = httpx.post(
        f"{server.url}/agent/invoke",
        json=turn("t", canary + " again"),
        headers={"X-Request-Id": "req-43"},
    )
    assert failed.status_code == 502
    server.stop()
    lines = [
        json.loads(line)
        for line in server.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    assert lines and all(
        {"time", "level", "logger", "request_id", "message"} <= set(line) for line in lines
    )
    assert any(
        line["request_id"] == "req-42" and line["logger"] == "uvicorn.access" for line in lines
    )
    assert any(
        line["request_id"] == "req-43" and "model call failed" in line["message"] for line in lines
    ), "the model failure is logged with its cause"
    assert canary not in server.log_path.read_text()
