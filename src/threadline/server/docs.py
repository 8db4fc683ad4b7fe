"""The API docs (`/docs`, `/redoc`, `/openapi.json`), behind the API key when keys are set.

They describe every route and its inputs, so with auth on they need a key like everything
else (a browser gets the Basic login prompt), unless `THREADLINE_PUBLISH_DOCS=true`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from threadline.server.auth import authenticate

OPENAPI_PATH = "/openapi.json"


def add_protected_docs(app: FastAPI) -> None:
    """The docs routes FastAPI would add, each asking for a key first."""

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        authenticate(request, browser=True)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        authenticate(request, browser=True)
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        authenticate(request, browser=True)
        return get_redoc_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - ReDoc")
