"""Prometheus metrics. Labels are bounded (outcomes, entity types, strategies): never a thread,
user, tenant or any text.

With several worker processes (`threadline serve --workers N`), prometheus-client's
multiprocess mode is used: the CLI points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory before
the workers start, each worker writes its samples there, and `/metrics` aggregates them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from threadline.observability.tracing import span

STORE_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
TURN_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
RATIO = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

TURNS = Counter(
    "threadline_turns_total",
    "Turns by outcome: ok, replayed, conflict, invalid, model_error, store_unavailable, error.",
    ["outcome"],
)
REPLAYS = Counter(
    "threadline_idempotent_replays_total",
    "Retried turns answered from their receipt (also counted as turns, outcome replayed).",
)
TURN_DURATION = Histogram(
    "threadline_turn_duration_seconds", "A turn, from admission to stored.", buckets=TURN_SECONDS
)
MODEL_DURATION = Histogram(
    "threadline_model_duration_seconds",
    "One model call (summaries included).",
    buckets=TURN_SECONDS,
)
CONTEXT_TOKENS = Histogram(
    "threadline_context_tokens", "Prompt tokens of a turn's last model call.", buckets=TOKENS
)
BUDGET_RATIO = Histogram(
    "threadline_context_budget_ratio", "Share of the context budget a view used.", buckets=RATIO
)
SUMMARY_FOLDS = Counter("threadline_summary_folds_total", "Turns that folded the summary.")
SUMMARY_FAILURES = Counter(
    "threadline_summary_failures_total", "Summary calls that failed, by reason.", ["reason"]
)
LOCK_WAIT = Histogram(
    "threadline_thread_lock_wait_seconds", "Waiting for a thread's turn lock.", buckets=TURN_SECONDS
)
PII_DETECTIONS = Counter(
    "threadline_pii_detections_total", "Sensitive values protected before storing.", ["entity"]
)
RETENTION = Counter(
    "threadline_retention_threads_total",
    "Threads handled by retention: expire, keep_latest, archive, restore, erase.",
    ["action"],
)
CHECKPOINT_OPS = Histogram(
    "threadline_checkpoint_op_duration_seconds",
    "Checkpoint store operations: backend, tier (hot, durable, or all of the backend), op.",
    ["backend", "tier", "op"],
    buckets=STORE_SECONDS,
)
HOT_READS = Counter(
    "threadline_hot_reads_total",
    "Tiered reads of a thread's latest checkpoint: hit (Redis served it), miss (Postgres, "
    "then Redis warmed), fallback (Redis unavailable or its breaker open).",
    ["result"],
)
HOT_BREAKER_OPEN = Gauge(
    "threadline_hot_breaker_open",
    "1 while the hot tier's breaker is open (serving from Postgres).",
    multiprocess_mode="livemax",
)
POOL_CONNECTIONS = Gauge(
    "threadline_pool_connections",
    "Connections of the store pools: store (postgres, redis), state (size, in_use, waiting).",
    ["store", "state"],
    multiprocess_mode="livesum",
)
SWEEPS = Counter("threadline_sweeps_total", "Retention sweeps, by result.", ["result"])


# Known label values start at 0, so rates and ratios exist before the first event.
for _outcome in ("ok", "replayed", "conflict", "invalid", "model_error", "store_unavailable"):
    TURNS.labels(outcome=_outcome)
for _result in ("hit", "miss", "fallback"):
    HOT_READS.labels(result=_result)
for _action in ("expire", "keep_latest", "archive", "restore", "erase"):
    RETENTION.labels(action=_action)

BACKENDS = {
    "MemorySaver": "memory",
    "SqliteSaver": "sqlite",
    "DurablePostgresSaver": "postgres",
    "RedisSaver": "redis",
    "TieredSaver": "tiered",
}


def backend_of(saver: object) -> str:
    return BACKENDS.get(type(saver).__name__, type(saver).__name__.lower())


@contextlib.contextmanager
def timed_op(backend: str, tier: str, op: str) -> Iterator[None]:
    """Time a store operation (and trace it, when tracing is on)."""
    started = time.perf_counter()
    try:
        with span(f"checkpoint {op}", **{"threadline.backend": backend, "threadline.tier": tier}):
            yield
    finally:
        CHECKPOINT_OPS.labels(backend=backend, tier=tier, op=op).observe(
            time.perf_counter() - started
        )


def observe_telemetry(telemetry: Mapping[str, Any] | None) -> None:
    """A stored turn's budget telemetry, as metrics."""
    if not telemetry:
        return
    CONTEXT_TOKENS.observe(telemetry.get("view_tokens", 0))
    if budget := telemetry.get("budget"):
        BUDGET_RATIO.observe(telemetry.get("view_tokens", 0) / budget)
    if telemetry.get("folded_this_turn"):
        SUMMARY_FOLDS.inc()
    if error := telemetry.get("summary_error"):
        SUMMARY_FAILURES.labels(reason=str(error)[:64]).inc()
    for entity, count in (telemetry.get("pii_detections") or {}).items():
        PII_DETECTIONS.labels(entity=entity).inc(count)


def exposition() -> tuple[bytes, str]:
    """The metrics page: this process's, or every worker's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
