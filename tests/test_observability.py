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


def turns_by_worker(tmp_dir: Any) -> list[float]:
    """The turns each worker counted, from its own file in the multiprocess directory."""
    from prometheus_client import multiprocess

    files = sorted(tmp_dir.glob("threadline-metrics-*/counter_*.db"))
    return [
        sum(
            sample.value
            for family in multiprocess.MultiProcessCollector.merge([str(file)])
            for sample in family.samples
            if sample.name == "threadline_turns_total"
        )
        for file in files
    ]


def samples_of(page: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


async def test_metrics_count_what_happened_across_two_workers(
    server_process: Any, openai_stub: Any, postgres_db_url: str, plain_redis_url: str, tmp_path: Any
) -> None:
    """The scripted sequence against `threadline serve --workers 2` on the tiered backend,
    each request on a new connection (both workers serve some): every counter moves by
    exactly what happened, and each refused or failed turn is logged once with its cause."""
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    thread = f"m-{uuid.uuid4().hex[:8]}"  # Redis is shared by the session's tests
    stores = {"postgres_url": postgres_db_url, "redis_url": plain_redis_url}
    server = server_process(
        {
            "THREADLINE_CHECKPOINTER": "tiered",
            "THREADLINE_POSTGRES_URL": postgres_db_url,
            "THREADLINE_REDIS_URL": plain_redis_url,
            "THREADLINE_TURN_LOCK_TIMEOUT_SECONDS": "0.2",
            "THREADLINE_LOG_FORMAT": "json",
            "THREADLINE_MODEL": "openai:gpt-4o-mini",
            "TMPDIR": str(tmp_path),  # where the workers' metric files go
            **openai_stub.env(),
        },
        args=("--workers", "2"),
    )
    fresh = {"Connection": "close"}

    async def post(body: Any, request_id: str, **headers: str) -> int:
        response = await client.post(
            "/agent/invoke", json=body, headers={**fresh, "X-Request-Id": request_id, **headers}
        )
        return response.status_code

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        before = samples_of((await client.get("/metrics", headers=fresh)).text)
        for n in range(2):
            assert await post(turn(thread, f"{canary} {n}"), f"ok-{n}") == 200
        for n in range(2):  # a retry: replayed from its receipt, not run again
            assert await post(turn(thread, canary), f"keyed-{n}", **{"Idempotency-Key": "k"}) == 200
        openai_stub.fail_next(3)  # ChatOpenAI retries twice
        assert await post(turn(thread, canary), "model-down") == 502
        settings = settings_for(checkpointer="tiered", **stores)
        async with open_turn_locks(settings) as locks, locks.hold([thread], 1):
            assert await post(turn(thread, canary), "busy") == 409
        assert await post(turn("no spaces!", canary), "bad-thread") == 422
        for request_id, name, value in (
            ("bad-override", "max_context_tokens", 1),  # refused by threadline's own check
            ("bad-config", "memory_strategy", canary),  # refused by LangServe's validation
        ):
            overridden = turn(thread, canary)
            overridden["config"]["configurable"][name] = value
            assert await post(overridden, request_id) == 422
        after = samples_of((await client.get("/metrics", headers=fresh)).text)
    per_worker = turns_by_worker(tmp_path)
    server.stop()

    def count(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    outcomes = {"ok": 3, "replayed": 1, "model_error": 1, "conflict": 1, "invalid": 3}
    assert len(per_worker) == 2 and all(per_worker), f"both workers counted turns: {per_worker}"
    assert sum(per_worker) == sum(outcomes.values())
    for outcome in ("ok", "replayed", "model_error", "conflict", "invalid", "store_unavailable"):
        assert count("threadline_turns_total", outcome=outcome) == outcomes.get(outcome, 0), outcome
    assert count("threadline_turns_total", outcome="error") == 0
    assert count("threadline_idempotent_replays_total") == 1
    assert count("threadline_turn_duration_seconds_count") == 3
    assert count("threadline_model_duration_seconds_count") == 3 + 1
    assert count("threadline_context_tokens_count") == 3
    assert count("threadline_context_budget_ratio_count") == 3
    assert count("threadline_summary_folds_total") == 0
    stored = {"backend": "tiered", "tier": "all", "op": "put"}
    assert count("threadline_checkpoint_op_duration_seconds_count", **stored) == 3  # one a turn
    # every request on a valid thread waits for its lock: all but the bad thread's
    assert count("threadline_thread_lock_wait_seconds_count") == 8
    for (name, labels), _ in after.items():  # bounded labels: no thread, user or text
        assert thread not in dict(labels).values() and canary not in str(labels), name

    log = server.log_path.read_text()
    assert canary not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    counted = sorted(
        (line["request_id"], line["message"])
        for line in lines
        if line["message"].startswith(("turn refused", "turn failed"))
    )
    assert counted == [  # one line each, with its request id, status and cause
        ("bad-config", "turn refused: 422 invalid, cause RequestValidationError"),
        ("bad-override", "turn refused: 422 invalid, cause InvalidOverrideError"),
        ("bad-thread", "turn refused: 422 invalid, cause validate_thread_id"),
        ("busy", "turn refused: 409 conflict, cause ThreadBusyError"),
        ("model-down", "turn failed: 502 model_error, cause OpenAIAPIError"),
    ], counted


async def test_refused_turns_are_counted_once_and_logged_with_their_cause(
    served: Any, openai_stub: Any, caplog: Any
) -> None:
    """Every way a turn is refused moves `threadline_turns_total` once — whether it is answered
    before the turn (admission, LangServe), by the receipt check, or inside a stream — and is
    logged once with its request id, status and cause; an unauthenticated request is no turn."""
    import logging

    from threadline.observability.logs import RequestIdFilter

    canary = f"canary-{uuid.uuid4().hex[:8]}"
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="threadline.server")
    reused = {"Idempotency-Key": "once"}
    async with served("memory", max_message_chars=100, api_keys="key-a:acme") as client:
        client.headers["Authorization"] = "Bearer key-a"

        async def post(path: str, request_id: str, headers: Any = None, **body: Any) -> int:
            headers = {"X-Request-Id": request_id, **(headers or {})}
            response = await client.post(path, headers=headers, **body)
            return response.status_code

        before = await scrape(client)
        assert await post("/agent/invoke", "no-json", content=b"{" + canary.encode()) == 422
        assert await post("/agent/invoke", "too-long", json=turn("t", canary * 10)) == 413
        assert (
            await post(
                "/agent/batch",
                "same-thread",
                json={
                    "inputs": [turn("t", canary)["input"]] * 2,
                    "config": {"configurable": {"thread_id": "t"}},
                },
            )
            == 422
        )
        assert await post("/agent/invoke", "first", reused, json=turn("t", canary)) == 200
        assert await post("/agent/invoke", "reused", reused, json=turn("t", "other")) == 422
        streamed = await client.post(
            "/agent/stream", json=turn("t", "another"), headers={**reused, "X-Request-Id": "s"}
        )
        assert '"status_code": 422' in streamed.text  # refused inside the stream
        assert await post("/chat/invoke", "chat", json={"input": {"messages": []}}) == 422
        no_key = {"Authorization": "Bearer nope"}
        assert await post("/agent/invoke", "no-key", no_key, json=turn("t", canary)) == 401
        after = await scrape(client)

    for outcome, times in {"ok": 1, "invalid": 6, "conflict": 0, "error": 0}.items():
        assert moved(before, after, "threadline_turns_total", outcome=outcome) == times, outcome
    logged = sorted(
        (getattr(record, "request_id", None), record.getMessage())
        for record in caplog.records
        if record.getMessage().startswith(("turn refused", "turn failed"))
    )
    assert logged == [
        ("chat", "turn refused: 422 invalid, cause check_turn_input"),
        ("no-json", "turn refused: 422 invalid, cause JSONDecodeError"),
        ("reused", "turn refused: 422 invalid, cause previous_result"),
        ("s", "turn refused: 422 invalid, cause previous_result"),
        ("same-thread", "turn refused: 422 invalid, cause agent_threads"),
        ("too-long", "turn refused: 413 invalid, cause check_messages"),
    ], logged
    assert canary not in caplog.text


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
    budget = [line for line in lines if line["logger"] == "threadline.memory"]
    assert any(
        line["request_id"] == "req-42" and "context budget" in line["message"] for line in budget
    )
    assert canary not in server.log_path.read_text()


async def test_hot_tier_and_pool_metrics(served: Any) -> None:
    """Each turn reads its thread's latest checkpoint once: from Redis (a hit), or, for a
    thread Redis does not hold, from Postgres after Redis (a miss), or with Redis down from
    Postgres alone (a fallback); and stores one checkpoint."""
    from threadline.dev.services import free_port

    def ops(tier: str, op: str) -> float:
        labels = {"backend": "tiered", "tier": tier, "op": op}
        return moved(before, after, "threadline_checkpoint_op_duration_seconds_count", **labels)

    hot = f"hot-{uuid.uuid4().hex[:8]}"  # Redis is shared by the session's tests
    async with served("tiered") as client:
        before = await scrape(client)
        for text in ("one", "two", "three"):
            assert (await client.post("/agent/invoke", json=turn(hot, text))).status_code == 200
        assert (await client.get(f"/threads/{hot}/history")).status_code == 200
        after = await scrape(client)
    assert moved(before, after, "threadline_hot_reads_total", result="miss") == 1  # new thread
    assert moved(before, after, "threadline_hot_reads_total", result="hit") == 2
    assert moved(before, after, "threadline_hot_reads_total", result="fallback") == 0
    assert (ops("all", "get"), ops("hot", "get"), ops("durable", "get")) == (3, 3, 1)
    assert (ops("all", "put"), ops("all", "list")) == (3, 1)
    assert ops("hot", "put") > 0 and ops("durable", "put") > 0  # the checkpoint and its writes
    assert after[("threadline_pool_connections", (("state", "size"), ("store", "postgres")))] > 0
    assert ("threadline_pool_connections", (("state", "in_use"), ("store", "redis"))) in after

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with served("tiered", redis_url=dead_redis) as client:
        before = await scrape(client)
        cold = f"cold-{uuid.uuid4().hex[:8]}"
        assert (await client.post("/agent/invoke", json=turn(cold, "hi"))).status_code == 200
        after = await scrape(client)
    assert moved(before, after, "threadline_hot_reads_total", result="fallback") == 1
    assert moved(before, after, "threadline_hot_reads_total", result="hit") == 0
    assert moved(before, after, "threadline_hot_reads_total", result="miss") == 0
    assert (ops("all", "get"), ops("durable", "get"), ops("all", "put")) == (1, 1, 1)
    assert after[("threadline_hot_breaker_open", ())] == 1


async def test_a_turn_is_one_linked_trace(
    openai_stub: Any, monkeypatch: Any, postgres_db_url: str
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from threadline.observability.tracing import disable_tracing
    from threadline.server import create_app

    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    settings = settings_for(
        model="openai:gpt-4o-mini", checkpointer="postgres", postgres_url=postgres_db_url
    )
    app = create_app(settings, tracer_provider=provider)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post(
                    "/agent/invoke", json=turn("traced", canary), headers={"X-Request-Id": "r-7"}
                )
                assert response.status_code == 200
    finally:
        disable_tracing()
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    http = next(s for s in spans if s.kind.name == "SERVER")
    assert http.attributes["threadline.request_id"] == "r-7"
    assert len({s.context.trace_id for s in spans}) == 1  # one trace
    turn_span = by_name["turn"]
    assert turn_span.parent.span_id == http.context.span_id
    nodes = [s for s in spans if s.name.startswith("node ")]
    assert sorted(n.name for n in nodes) == ["node model", "node trim_or_summarize"]  # once each
    assert all(n.parent.span_id == turn_span.context.span_id for n in nodes)
    nodes_by_name = {n.name: n for n in nodes}
    chat = by_name["chat gpt-4o-mini"]
    assert chat.parent.span_id == nodes_by_name["node model"].context.span_id
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    stores = [s for s in spans if s.name.startswith("checkpoint ")]
    assert {s.name for s in stores} >= {"checkpoint get", "checkpoint put"}
    assert all(s.context.trace_id == http.context.trace_id for s in stores)
    unmarked = [s.name for s in spans if s.attributes.get("threadline.request_id") != "r-7"]
    assert not unmarked, f"spans without the request id: {unmarked}"
    assert canary not in json.dumps([dict(s.attributes or {}) for s in spans], default=str)


def dashboard_queries() -> list[str]:
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "ops" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


async def test_the_dashboard_uses_only_metrics_that_exist(served: Any) -> None:
    import re

    async with served("tiered") as client:
        page = (await client.get("/metrics")).text
    families = {family.name for family in text_string_to_metric_families(page)}
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for query in dashboard_queries()
        for name in re.findall(r"threadline_[a-z_]+", query)
    }
    assert used and not used - families, used - families


def test_a_real_prometheus_scrapes_it_and_runs_the_dashboard(
    openai_stub: Any, monkeypatch: Any, tmp_path: Any
) -> None:
    import shutil
    import subprocess
    import time

    from tests.fixtures.server import live_server
    from threadline.dev.services import free_port

    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: `sudo apt-get install prometheus` (Debian/Ubuntu)"
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(model="openai:gpt-4o-mini", checkpointer="memory")
    with live_server(settings) as url:
        for n in range(3):
            assert httpx.post(f"{url}/agent/invoke", json=turn(f"p{n}", "hi")).status_code == 200
        port = free_port()
        config = tmp_path / "prometheus.yml"
        target = url.removeprefix("http://")
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs: [{job_name: threadline, static_configs: "
            f"[{{targets: ['{target}']}}]}}]\n"
        )
        with (tmp_path / "prometheus.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = f"http://127.0.0.1:{port}/api/v1/query"
        try:
            value = None
            deadline = time.monotonic() + 60
            while value is None and time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    answer = httpx.get(
                        api, params={"query": 'threadline_turns_total{outcome="ok"}'}
                    )
                except httpx.TransportError:
                    continue
                results = answer.json().get("data", {}).get("result", [])
                value = float(results[0]["value"][1]) if results else None
            assert value is not None, (tmp_path / "prometheus.log").read_text()[-2000:]
            direct = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
                for s in f.samples
            }
            assert value == direct[("threadline_turns_total", (("outcome", "ok"),))] >= 3
            for query in dashboard_queries():  # every panel's PromQL runs
                answer = httpx.get(api, params={"query": query}).json()
                assert answer["status"] == "success", (query, answer)
        finally:
            process.terminate()
            process.wait(timeout=30)
