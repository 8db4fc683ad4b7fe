"""Store outages as HTTP: a 503 with a message on every route, never a 500 with a traceback.

The savers and the lock stores raise these when Postgres or Redis cannot be reached (or no
pooled connection frees up in time); nothing was stored, so the client may retry.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg import OperationalError
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from threadline.checkpointers.durable import CheckpointStoreUnavailable
from threadline.locks import LockBackendError

logger = logging.getLogger(__name__)

STORE_ERRORS: tuple[type[Exception], ...] = (
    CheckpointStoreUnavailable,
    LockBackendError,
    OperationalError,
    PoolTimeout,
    RedisConnectionError,
    RedisTimeoutError,
)


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning(
        "%s %s: store unavailable (%s: %s)",
        request.method,
        request.url.path,
        type(exc).__name__,
        str(exc).splitlines()[0][:200] if str(exc) else "",
    )
    return JSONResponse(
        {
            "detail": f"the thread store is unavailable ({type(exc).__name__}); nothing was "
            "stored, retry later"
        },
        status_code=503,
        headers={"Retry-After": "1"},
    )


def install_outage_handlers(app: FastAPI) -> None:
    for error in STORE_ERRORS:
        app.add_exception_handler(error, store_unavailable)
