"""Every turn counted once in `threadline_turns_total`, and every one that did not run to the
end logged once with its status and cause.

A turn that ran is counted by the turn (`ok`, or its failure through `failures_counted`); a
replayed one where its receipt is found (`replayed`). A turn refused before it runs — a bad
thread id, override or body (422/413), a busy thread (409), an unavailable lock store (503) — is
counted at the request's edge by the exception handlers `install_refusal_handlers` wraps, which
see what the turn raised too: an exception is remembered once counted, so it is never counted
twice. Refusals raised inside a stream never reach the edge; they are counted where they are
raised (`failures_counted`).

The cause logged is the name of the exception behind the refusal, or of the check that raised
it — never an exception's message, which may echo what the client sent.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from threadline.observability.metrics import TURNS
from threadline.server.outages import STORE_ERRORS, UNREADABLE_ERRORS

OUTCOMES = {
    400: "invalid",
    404: "invalid",
    409: "conflict",
    413: "invalid",
    422: "invalid",
    502: "model_error",
    503: "store_unavailable",
}
NOT_TURNS = frozenset({401, 403})  # unauthenticated: nobody's turn, so not counted as one

log = logging.getLogger("threadline.server")
_counted: weakref.WeakSet[BaseException] = weakref.WeakSet()

Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def status_of(exc: BaseException) -> int:
    """The HTTP status `exc` is answered with."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, STORE_ERRORS):
        return 503
    return 500


def cause_of(exc: BaseException) -> str:
    """A name saying why: the exception an HTTP error was raised for, else the function that
    raised it; for any other exception, its type."""
    if not isinstance(exc, HTTPException):
        return type(exc).__name__
    if exc.__context__ is not None:
        return type(exc.__context__).__name__
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame.tb_frame.f_code.co_name if frame is not None else type(exc).__name__


def count_failed_turn(exc: BaseException) -> None:
    """Count and log the turn `exc` ended, unless it was counted already."""
    if exc in _counted:
        return
    _counted.add(exc)
    status = status_of(exc)
    outcome = OUTCOMES.get(status, "error")
    TURNS.labels(outcome=outcome).inc()
    if status < 500:
        log.info("turn refused: %s %s, cause %s", status, outcome, cause_of(exc))
    else:
        log.warning("turn failed: %s %s, cause %s", status, outcome, cause_of(exc))


@contextlib.contextmanager
def failures_counted() -> Iterator[None]:
    """Count (once) the turn an exception raised in here ends."""
    try:
        yield
    except Exception as exc:
        count_failed_turn(exc)
        raise


def is_turn(request: Request, paths: tuple[str, ...], endpoints: frozenset[str]) -> bool:
    """A POST to one of the turn `endpoints` (LangServe's invoke, stream, ...) of `paths`."""
    path = request.url.path.rstrip("/")
    return (
        request.method == "POST"
        and path.startswith(tuple(f"{p}/" for p in paths))
        and path.rsplit("/", 1)[-1] in endpoints
    )


def install_refusal_handlers(
    app: FastAPI, paths: tuple[str, ...], endpoints: frozenset[str]
) -> None:
    """Count the turns refused on `paths`' turn `endpoints` in the handlers already installed
    for HTTP errors, invalid requests and store outages (so after `install_outage_handlers`)."""

    def counting(handler: Handler) -> Handler:
        async def counted(request: Request, exc: Any) -> Response:
            if is_turn(request, paths, endpoints) and status_of(exc) not in NOT_TURNS:
                count_failed_turn(exc)
            answer = handler(request, exc)
            return await answer if inspect.isawaitable(answer) else answer

        return counted

    for error in (HTTPException, RequestValidationError, *STORE_ERRORS, *UNREADABLE_ERRORS):
        app.add_exception_handler(error, counting(app.exception_handlers[error]))
