"""`create_app(settings)`: the FastAPI app serving the agent over LangServe.

The lifespan opens the configured checkpointer and attaches it to the graph compiled once at
start-up; routes read the thread from the request, because LangServe drops client-sent
`configurable` keys that the graph's config schema does not declare.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from langserve import add_routes

from threadline.checkpointers import open_checkpointer
from threadline.graph import make_graph
from threadline.server.threads import THREAD_HEADER, validate_thread_id
from threadline.settings import Settings


async def thread_config(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """Put the request's thread into the run config (body `configurable.thread_id` or header)."""
    thread_id = request.headers.get(THREAD_HEADER)
    if thread_id is None:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            body = {}
        sent = body.get("config") if isinstance(body, dict) else None
        if isinstance(sent, dict):
            thread_id = (sent.get("configurable") or {}).get("thread_id")
    if thread_id is None:
        raise HTTPException(
            422, f"a thread is required: config.configurable.thread_id or {THREAD_HEADER}"
        )
    configurable = dict(config.get("configurable") or {})
    configurable["thread_id"] = validate_thread_id(thread_id)
    return {**config, "configurable": configurable}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The HTTP app. The saver lives exactly as long as the app's lifespan."""
    settings = (settings or Settings()).check()
    graph = make_graph(settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_checkpointer(settings) as saver:
            graph.checkpointer = saver
            app.state.graph = graph
            yield

    app = FastAPI(title="threadline", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    add_routes(
        app,
        graph,
        path="/agent",
        config_keys=["configurable"],
        per_req_config_modifier=thread_config,
        enabled_endpoints=[
            "invoke",
            "batch",
            "stream",
            "stream_events",
            "input_schema",
            "output_schema",
            "config_schema",
        ],
    )
    return app
