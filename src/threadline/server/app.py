"""`create_app(settings)`: the FastAPI app serving the agent.

The graph is compiled once here; the lifespan opens the configured checkpointer and the matching
thread locks and hands both to the routes for as long as the app runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from langserve import add_routes

from threadline.assembly import make_graph, memory_policy, protector, thread_naming
from threadline.audit import open_audit_log
from threadline.checkpointers import open_checkpointer
from threadline.locks import open_turn_locks
from threadline.observability.metrics import exposition
from threadline.observability.pools import observe_pools, observe_pools_every
from threadline.observability.tracing import asgi_middleware, enable_tracing
from threadline.privacy.id_migration import count_readable_threads
from threadline.privacy.names import ThreadNaming
from threadline.retention import Sweeper, ThreadKeeper, open_archive
from threadline.server.admission import (
    TURN_ENDPOINTS,
    Admission,
    admit_agent_turns,
    agent_config,
)
from threadline.server.auth import ApiKeys, require_tenant, warn_if_open
from threadline.server.chat import (
    CHAT_PATH,
    ChatAgent,
    ChatThreadCookie,
    admit_chat_turn,
    chat_config,
    playground_router,
)
from threadline.server.connections import BodyDeadline
from threadline.server.docs import add_protected_docs
from threadline.server.limits import Limits
from threadline.server.openapi import documented_openapi
from threadline.server.outages import install_outage_handlers
from threadline.server.refusals import install_refusal_handlers
from threadline.server.request_ids import RequestIds
from threadline.server.serving import Serving, ServingSlot
from threadline.server.streams import EndFailedStreams
from threadline.server.thread_routes import router as threads_router
from threadline.server.turns import ServedAgent, TurnRunner
from threadline.server.user_routes import router as users_router
from threadline.settings import Settings, SettingsError

AGENT_PATH = "/agent"
READY_PROBE_THREAD = "threadline-readyz"
READY_TIMEOUT_SECONDS = 3.0
POOL_REFRESH_SECONDS = 5.0


async def _probe(check: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(check, READY_TIMEOUT_SECONDS)
    except Exception as exc:  # the probe reports any failure; it never raises
        return f"unavailable ({type(exc).__name__})"
    return "ok"


async def sweep_periodically(sweeper: Sweeper, settings: Settings) -> None:
    """The retention sweep, every `THREADLINE_SWEEP_INTERVAL` (one batch each time; one replica
    at a time, through the sweep's lease)."""
    log = logging.getLogger("threadline.retention")
    while True:
        await asyncio.sleep(settings.sweep_interval_seconds)
        report = await sweeper.sweep()
        if report.expired or report.error:
            log.info("retention sweep: %s", report.summary())


log = logging.getLogger("threadline.server")


async def refuse_readable_ids(saver: Any, naming: ThreadNaming) -> None:
    """With ids hashed, threads still stored under readable ids would seem gone: refuse."""
    if naming.hashed and (count := await count_readable_threads(saver)):
        message = (
            f"{count} threads are stored under readable ids, which encryption now hashes; "
            "run `threadline keys rotate` to move them, then start again"
        )
        log.error(message)
        raise SettingsError(message)


def create_app(settings: Settings | None = None, *, tracer_provider: Any = None) -> FastAPI:
    """The HTTP app. Saver and locks live exactly as long as the app's lifespan.

    With `THREADLINE_OTEL=true` (or a `tracer_provider`, as tests give) requests are traced."""
    settings = (settings or Settings.from_env()).check()
    api_keys = ApiKeys.parse(settings.api_keys)
    graph = make_graph(settings=settings)
    serving = ServingSlot()
    agent = ServedAgent(graph, lambda: serving.current.runner)
    chat = ChatAgent(lambda: serving.current.runner)
    admission = Admission(
        limits=Limits.from_settings(settings),
        policy=memory_policy(settings),
        lock_timeout=settings.turn_lock_timeout_seconds,
        serving=serving,
        naming=thread_naming(settings),
    )
    audit = open_audit_log(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warn_if_open(api_keys)
        async with AsyncExitStack() as stack:
            locks = await stack.enter_async_context(open_turn_locks(settings))
            async with locks.setup_guard():
                saver = await stack.enter_async_context(open_checkpointer(settings))
            await refuse_readable_ids(saver, admission.naming)
            stored_graph = graph.copy({"checkpointer": saver})
            keeper = ThreadKeeper(stored_graph, open_archive(settings.archive_url), audit)
            runner = TurnRunner(
                stored_graph,
                receipt_lifetime_seconds=settings.idempotency_ttl_seconds,
                keeper=keeper,
                restore_on_turn=settings.restore_on_turn,
                protector=protector(settings),
                model_sees_protected=settings.pii_model_sees == "redacted",
                naming=admission.naming,
            )
            if runner.protector is not None:  # load the recognizers now, not in the first turn
                await asyncio.to_thread(runner.protector.detector.find, "")
            serving.fill(Serving(runner, locks, keeper))
            sweeper = Sweeper.configured(keeper, locks, settings)
            background = [
                asyncio.create_task(sweep_periodically(sweeper, settings)),
                asyncio.create_task(observe_pools_every(saver, POOL_REFRESH_SECONDS)),
            ]
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                serving.fill(None)

    protect_docs = api_keys is not None and not settings.publish_docs
    hidden: dict[str, Any] = (
        {"docs_url": None, "redoc_url": None, "openapi_url": None} if protect_docs else {}
    )
    app = FastAPI(
        title="threadline",
        description="A chat agent with durable, shared, budget-aware thread memory.",
        lifespan=lifespan,
        **hidden,
    )
    app.openapi = lambda: documented_openapi(app, keys=api_keys is not None)  # type: ignore[method-assign]
    if protect_docs:
        add_protected_docs(app)
    app.state.api_keys = api_keys
    app.state.admission = admission
    app.state.serving = serving
    app.add_middleware(ChatThreadCookie)
    if settings.otel or tracer_provider is not None:
        middleware, options = asgi_middleware(enable_tracing(tracer_provider))
        app.add_middleware(middleware, **options)
    app.add_middleware(EndFailedStreams)
    app.add_middleware(BodyDeadline, seconds=settings.body_timeout_seconds)
    app.add_middleware(RequestIds)  # added last, so outermost: the id is on every span and line
    install_outage_handlers(app)
    install_refusal_handlers(app, (AGENT_PATH, CHAT_PATH), TURN_ENDPOINTS)

    metrics_guard = [] if settings.metrics_public else [Depends(require_tenant)]

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=metrics_guard,
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        """Prometheus metrics (every worker's); behind the API key unless published."""
        if serving.ready:
            observe_pools(serving.current.runner.graph.checkpointer)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The checkpointer and the thread locks answer; 503 otherwise."""
        if not serving.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        current = serving.current
        saver = current.runner.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        checks = {
            "checkpointer": await _probe(
                saver.aget_tuple({"configurable": {"thread_id": READY_PROBE_THREAD}})
            ),
            "thread_locks": await _probe(current.locks.ping()),
        }
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    app.include_router(threads_router)
    app.include_router(users_router)
    app.include_router(playground_router(lambda: serving.current.runner))
    add_routes(
        app,
        agent,
        path=AGENT_PATH,
        config_keys=["configurable"],
        per_req_config_modifier=agent_config,
        dependencies=[Depends(admit_agent_turns)],
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
    add_routes(
        app,
        chat.runnable(),
        path=CHAT_PATH,
        config_keys=["configurable"],
        per_req_config_modifier=chat_config,
        dependencies=[Depends(admit_chat_turn)],
        enabled_endpoints=[
            "invoke",
            "stream",
            "stream_log",
            "input_schema",
            "output_schema",
            "config_schema",
        ],
    )
    return app
