"""Ending a failed stream cleanly.

LangServe sends an `error` event when a streamed run raises, then re-raises. By then the
response has started, so the exception can only tear the connection down (and log a
traceback). This middleware lets the error event be the stream's clean last word: it logs one
line and closes the body properly.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class EndFailedStreams:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"started": False, "ended": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if not state["started"]:
                raise
            logger.warning(
                "%s %s: the run failed after its response started (%s); the stream ended with "
                "an error event",
                scope.get("method"),
                scope.get("path"),
                type(
                    exc.__context__ if isinstance(exc, RuntimeError) and exc.__context__ else exc
                ).__name__,
            )
            if not state["ended"]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
