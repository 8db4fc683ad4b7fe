"""Ending a failed stream cleanly, with an error a person can act on.

LangServe sends an `error` event when a streamed run raises, then re-raises. By then the
response has started, so the exception can only tear the connection down (and log a
traceback). This middleware lets the error event be the stream's clean last word: it logs one
line and closes the body properly. LangServe's event always says "500 Internal Server Error"
(an exception may hold anything); when the run failed with one of threadline's own
`HTTPException`s (a 502 from the model, a 409, a 503 from the store), whose messages are written
for clients, the event carries that status and message instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class EndFailedStreams:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"started": False, "ended": False, "error_event": None}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body":
                if message.get("body", b"").startswith(ERROR_EVENT):
                    state["error_event"] = message  # sent once we know what failed
                    return
                if not message.get("more_body"):
                    state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if not state["started"]:
                raise
            cause = exc.__context__ if isinstance(exc, RuntimeError) and exc.__context__ else exc
            if state["error_event"] is not None:
                await send({**state["error_event"], "body": _error_event(cause), "more_body": True})
            logger.warning(
                "%s %s: the run failed after its response started (%s); the stream ended with "
                "an error event",
                scope.get("method"),
                scope.get("path"),
                type(cause).__name__,
            )
            if not state["ended"]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            if state["error_event"] is not None:  # an error event without an exception
                await send(state["error_event"])


ERROR_EVENT = b"event: error"


def _error_event(cause: BaseException) -> bytes:
    """The SSE error event for `cause`: its own status and message if it is one of ours."""
    if isinstance(cause, HTTPException) and isinstance(cause.detail, str):
        payload = {"status_code": cause.status_code, "message": cause.detail}
    else:
        payload = {"status_code": 500, "message": "Internal Server Error"}
    return f"event: error\r\ndata: {json.dumps(payload)}\r\n\r\n".encode()
