"""Bounded waits on slow or idle clients, below the app.

uvicorn closes a keep-alive connection only once it has answered a request on it, so a socket
that never sends a request, or trickles its headers, stays open for good; and nothing bounds
how long a request body may take to arrive. `GuardedHttpToolsProtocol` closes a connection
whose request head has not arrived within `THREADLINE_HEADER_TIMEOUT_SECONDS`;
`BodyDeadline` answers 408 to a body that has not arrived within
`THREADLINE_BODY_TIMEOUT_SECONDS`. A reverse proxy in front should still bound these (and
connection counts) itself: see the README.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from threadline.settings import Settings


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing connections whose request head is late."""

    head_timeout: float | None = None  # read once per process, from the settings

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._await_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        if GuardedHttpToolsProtocol.head_timeout is None:
            GuardedHttpToolsProtocol.head_timeout = Settings.from_env().header_timeout_seconds
        self._head_deadline = self.loop.call_later(
            GuardedHttpToolsProtocol.head_timeout, self._close_late
        )

    def _stop_waiting(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _close_late(self) -> None:
        self._head_deadline = None
        if self.cycle is None or not self.cycle.response_started:
            self.transport.close()


class BodyDeadline:
    """408 for a request whose body has not fully arrived within `seconds` of its start."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.seconds
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except BodyTimeout:
            if started:
                raise
            response = JSONResponse(
                {"detail": f"the request body did not arrive within {self.seconds:g}s"},
                status_code=408,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)


class BodyTimeout(Exception):
    """The request body is late."""
