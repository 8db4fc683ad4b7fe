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
    budget = [line for line in lines if line["logger"] == "threadline.memory"]
    assert any(
        line["request_id"] == "req-42" and "context budget" in line["message"] for line in budget
    )
    assert canary not in server.log_path.read_text()


async def test_hot_tier_and_pool_metrics(served: Any) -> None:
    from threadline.dev.services import free_port

    async with served("tiered") as client:
        before = await scrape(client)
        for text in ("one", "two", "three"):
            assert (await client.post("/agent/invoke", json=turn("hot", text))).status_code == 200
        assert (await client.get("/threads/hot/history")).status_code == 200
        after = await scrape(client)
    assert moved(before, after, "threadline_hot_reads_total", result="hit") >= 2
    for tier, op in (
        ("hot", "get"),
        ("hot", "put"),
        ("durable", "put"),
        ("all", "get"),
        ("all", "list"),
    ):
        labels = {"backend": "tiered", "tier": tier, "op": op}
        assert moved(before, after, "threadline_checkpoint_op_duration_seconds_count", **labels) > 0
    assert after[("threadline_pool_connections", (("state", "size"), ("store", "postgres")))] > 0
    assert ("threadline_pool_connections", (("state", "in_use"), ("store", "redis"))) in after

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with served("tiered", redis_url=dead_redis) as client:
        before = await scrape(client)
        assert (await client.post("/agent/invoke", json=turn("cold", "hi"))).status_code == 200
        after = await scrape(client)
    assert moved(before, after, "threadline_hot_reads_total", result="fallback") >= 1
    assert after[("threadline_hot_breaker_open", ())] == 1


def test_two_workers_report_together(
    server_process: Any, openai_stub: Any, postgres_db_url: str
) -> None:
    server = server_process(
        {
            "THREADLINE_CHECKPOINTER": "postgres",
            "THREADLINE_POSTGRES_URL": postgres_db_url,
            "THREADLINE_MODEL": "openai:gpt-4o-mini",
            **openai_stub.env(),
        },
        args=("--workers", "2"),
    )
    turns = 12
    with httpx.Client(base_url=server.url, timeout=30) as client:  # new connections: both workers
        for n in range(turns):
            response = client.post(
                "/agent/invoke", json=turn(f"w{n}", "hi"), headers={"Connection": "close"}
            )
            assert response.status_code == 200
        families = text_string_to_metric_families(client.get("/metrics").text)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    assert samples[("threadline_turns_total", (("outcome", "ok"),))] == turns
    assert samples[("threadline_turn_duration_seconds_count", ())] == turns


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
    stores = [s for s in spans if s.name.startswith("checkpoint ")]
    assert {s.name for s in stores} >= {"checkpoint get", "checkpoint put"}
    assert all(s.context.trace_id == http.context.trace_id for s in stores)
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
