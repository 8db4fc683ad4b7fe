"""Connection-pool usage, read from the saver's pools (psycopg's `get_stats`, redis-py's
connection counts) into `threadline_pool_connections`."""

from __future__ import annotations

from typing import Any

from threadline.observability.metrics import POOL_CONNECTIONS


def _postgres_pool(saver: Any) -> Any:
    durable = getattr(saver, "durable", saver)  # tiered: its Postgres saver
    pool = getattr(durable, "conn", None)
    return pool if hasattr(pool, "get_stats") else None


def _redis_pool(saver: Any) -> Any:
    client = getattr(getattr(saver, "hot", None), "client", None) or getattr(saver, "_redis", None)
    pool = getattr(client, "connection_pool", None)
    return pool if hasattr(pool, "get_connection_count") else None


def observe_pools(saver: Any) -> None:
    if (pool := _postgres_pool(saver)) is not None:
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        POOL_CONNECTIONS.labels(store="postgres", state="size").set(size)
        POOL_CONNECTIONS.labels(store="postgres", state="in_use").set(
            size - stats.get("pool_available", 0)
        )
        POOL_CONNECTIONS.labels(store="postgres", state="waiting").set(
            stats.get("requests_waiting", 0)
        )
    if (pool := _redis_pool(saver)) is not None:
        counts = {
            attributes.get("db.client.connection.state"): n
            for n, attributes in pool.get_connection_count()
        }
        in_use = counts.get("used", 0)
        POOL_CONNECTIONS.labels(store="redis", state="size").set(in_use + counts.get("idle", 0))
        POOL_CONNECTIONS.labels(store="redis", state="in_use").set(in_use)


async def observe_pools_every(saver: Any, seconds: float) -> None:
    """Refresh the pool gauges while the server runs (every worker its own)."""
    import asyncio

    while True:
        observe_pools(saver)
        await asyncio.sleep(seconds)
