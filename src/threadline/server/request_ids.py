"""Every request gets an id: the client's `X-Request-Id` if it is a sane one, else a new one.
It is returned in the response and is on every log line written while serving the request
(`observability.logs.REQUEST_ID`), turns streamed in their own tasks included."""

from __future__ import annotations

import re
import uuid
from typing import Any

from threadline.observability.logs import REQUEST_ID

HEADER = b"x-request-id"
VALID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """Pure ASGI (streams pass through untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER, b"")
        request_id = given.decode() if VALID.fullmatch(given) else uuid.uuid4().hex

        async def with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, with_id)
        finally:
            REQUEST_ID.reset(token)
