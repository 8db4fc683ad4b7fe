"""What `langgraph.json` points at: the graph, the saver factory and the HTTP app.

`graph` is the agent compiled without a checkpointer (Studio refuses one that brings its own);
it is built here, at a composition root, so that importing `threadline.graph` reads nothing.

`langgraph dev` enters `checkpointer()` once at start-up and keeps the saver for the server's
lifetime, so Studio threads persist through the configured backend exactly like the HTTP
server's. `app` mounts the threadline HTTP API under `/threadline`, beside the LangGraph API:
mounted at the root, its `/threads/...` routes would shadow the ones Studio itself calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from langgraph.checkpoint.base import BaseCheckpointSaver

from threadline.assembly import make_graph
from threadline.checkpointers import open_checkpointer
from threadline.server import create_app
from threadline.settings import Settings

MOUNT_PATH = "/threadline"


@asynccontextmanager
async def checkpointer() -> AsyncIterator[BaseCheckpointSaver]:
    """The configured saver; a bad setting stops `langgraph dev` with one line, not a 500 later."""
    async with open_checkpointer(Settings.from_env().check()) as saver:
        yield saver


def make_studio_app(settings: Settings | None = None) -> FastAPI:
    """The threadline app under `MOUNT_PATH`; its lifespan (saver, graph) runs with the server's.

    Starlette never runs a mounted app's lifespan, so the outer app enters it explicitly.
    """
    threadline_app = create_app(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with threadline_app.router.lifespan_context(threadline_app):
            yield

    outer = FastAPI(title="threadline (langgraph dev)", lifespan=lifespan)
    outer.mount(MOUNT_PATH, threadline_app)
    return outer


graph = make_graph(settings=Settings.from_env())
app = make_studio_app()
