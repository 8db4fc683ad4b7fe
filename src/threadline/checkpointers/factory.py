"""`open_checkpointer(settings)`: the configured saver, set up and ready, as a context manager.

Each backend owns its connections for exactly the lifetime of the context, so the FastAPI
lifespan, the CLI and `langgraph dev` all open and close savers the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver

from threadline.checkpointers.memory import MemorySaver
from threadline.checkpointers.serde import make_serializer
from threadline.settings import Settings, SettingsError


def _secret(value: object) -> str:
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver]:
    """Yield the saver `settings.checkpointer` names, with its tables/indexes set up.

    Every one keeps turn receipts (`receipts.KeepsReceipts`)."""
    aes_key = _secret(settings.aes_key) if settings.aes_key else None
    aes_keys = _secret(settings.aes_keys) if settings.aes_keys else None
    serde = make_serializer(aes_key, aes_keys)
    kind = settings.checkpointer
    settings.check_store()
    if kind == "memory":
        yield MemorySaver(serde=serde)
    elif kind == "sqlite":
        import aiosqlite

        from threadline.checkpointers.sqlite import SqliteSaver

        path = Path(settings.sqlite_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(str(path)) as conn:
            sqlite_saver = SqliteSaver(conn, serde=serde)
            await sqlite_saver.setup()
            yield sqlite_saver
    elif kind == "dynamodb":
        from threadline.checkpointers.dynamodb import DynamoDBSaver

        async with DynamoDBSaver.from_settings(
            settings.dynamodb_table,
            endpoint_url=settings.dynamodb_endpoint_url,
            serde=serde,
            history_cache_bytes=settings.history_cache_mb * 1024 * 1024,
        ) as dynamodb_saver:
            yield dynamodb_saver
    elif kind == "firestore":
        from threadline.checkpointers.firestore import FirestoreSaver

        async with FirestoreSaver.from_settings(
            settings.firestore_project,
            settings.firestore_collection,
            serde=serde,
            history_cache_bytes=settings.history_cache_mb * 1024 * 1024,
        ) as firestore_saver:
            yield firestore_saver
    elif kind == "postgres":
        from threadline.checkpointers.durable import DurablePostgresSaver

        async with DurablePostgresSaver.from_conn_string(
            _secret(settings.postgres_url),
            pool_size=settings.postgres_pool_size,
            pool_timeout_seconds=settings.postgres_pool_timeout_seconds,
            serde=serde,
            history_cache_bytes=settings.history_cache_mb * 1024 * 1024,
        ) as postgres_saver:
            yield postgres_saver
    elif kind == "redis":
        from threadline.checkpointers.redis import RedisSaver

        if aes_key or aes_keys:
            raise SettingsError(
                "THREADLINE_CHECKPOINTER=redis cannot encrypt (its serializer is fixed); "
                "use tiered or postgres with THREADLINE_AES_KEY"
            )
        ttl = (
            {"default_ttl": settings.redis_ttl_minutes, "refresh_on_read": True}
            if settings.redis_ttl_minutes
            else None
        )
        async with RedisSaver.from_conn_string(_secret(settings.redis_url), ttl=ttl) as saver:
            await saver.asetup()
            yield saver
    elif kind == "tiered":
        from threadline.checkpointers.tiered import TieredSaver

        async with TieredSaver.from_conn_string(
            _secret(settings.postgres_url),
            _secret(settings.redis_url),
            serde=serde,
            pool_size=settings.postgres_pool_size,
            pool_timeout_seconds=settings.postgres_pool_timeout_seconds,
            history_cache_bytes=settings.history_cache_mb * 1024 * 1024,
            hot_ttl_seconds=settings.hot_ttl_seconds,
            redis_timeout_seconds=settings.redis_timeout_seconds,
            redis_cluster=settings.redis_cluster,
            redis_pool_size=settings.redis_pool_size,
        ) as tiered_saver:
            yield tiered_saver
    else:  # pragma: no cover - Settings validates the kind
        raise SettingsError(f"unknown THREADLINE_CHECKPOINTER={kind}")
