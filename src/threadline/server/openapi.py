"""The OpenAPI document says what the server answers.

FastAPI documents 422 as a list of field errors, but threadline's own checks answer
`{"detail": "<message>"}`; and the errors every route can give (401 with API keys, 503 when a
store is down, 404 for a thread that does not exist, 409/413 on turns, 408 for a late body)
are not in FastAPI's generated document, nor is the 400 the HTTP server itself gives a request
it cannot parse. They are added here, once, for every route.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"title": "Detail", "type": "string"}},
    "required": ["detail"],
}
COMMON_ERRORS = {
    "408": "The request body did not arrive in time",
    "503": "A store (Postgres, Redis) or the thread locks are unavailable; retry",
}
TURN_ERRORS = {
    "409": "The thread is busy with another turn, or holds a different message with this id",
    "413": "Too many or too large messages",
}
KEY_ERRORS = {"401": "Missing or unknown API key"}
# Answered by the HTTP server itself (a header it cannot parse), before any route runs.
MALFORMED_REQUEST = {
    "description": "A malformed HTTP request, refused by the HTTP server",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
THREAD_ERRORS = {"404": "No such thread (or another tenant's)"}


def documented_openapi(app: FastAPI, *, keys: bool) -> dict[str, Any]:
    """FastAPI's document with threadline's error answers added (cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    if "HTTPValidationError" in schemas:
        detail = schemas["HTTPValidationError"]["properties"]["detail"]
        schemas["HTTPValidationError"]["properties"]["detail"] = {
            "title": "Detail",
            "anyOf": [{"type": "string"}, {k: v for k, v in detail.items() if k != "title"}],
        }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            errors = dict(COMMON_ERRORS)
            if keys and path not in ("/healthz", "/readyz"):
                errors.update(KEY_ERRORS)
            if method == "post":
                errors.update(TURN_ERRORS)
            if path.startswith("/threads/{thread_id}"):
                errors.update(THREAD_ERRORS)
            responses = operation.setdefault("responses", {})
            responses.setdefault("400", MALFORMED_REQUEST)
            for status, description in errors.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
    app.openapi_schema = document
    return document
