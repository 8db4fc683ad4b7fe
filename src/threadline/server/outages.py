"""Store failures as HTTP, with a message on every route, never a traceback: an outage is a
503 (the savers and the lock stores raise these when a store cannot be reached, or no pooled
connection frees up in time; nothing was stored, so the client may retry); a stored value
refused on reading (tampered, misplaced, or under a key no longer held) is a 500 naming why.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from threadline.checkpointers.serde import (
    MisplacedValueError,
    UnencryptedDataError,
    UnknownKeyError,
)
from threadline.store_errors import STORE_ERRORS

logger = logging.getLogger(__name__)


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


# A stored value refused on reading: bound to another place, under a key the deployment no
# longer holds, or unencrypted while a key is set. Nothing of it is served.
UNREADABLE_ERRORS: tuple[type[Exception], ...] = (
    MisplacedValueError,
    UnknownKeyError,
    UnencryptedDataError,
)


async def stored_value_refused(request: Request, exc: Exception) -> JSONResponse:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    logger.error("%s %s: a stored value was refused (%s)", request.method, request.url.path, reason)
    return JSONResponse(
        {"detail": f"a stored value of this thread cannot be read ({reason}); nothing was served"},
        status_code=500,
    )


def install_outage_handlers(app: FastAPI) -> None:
    for error in STORE_ERRORS:
        app.add_exception_handler(error, store_unavailable)
    for error in UNREADABLE_ERRORS:
        app.add_exception_handler(error, stored_value_refused)
