"""Optional OpenTelemetry traces (`THREADLINE_OTEL=true`, exported with the standard
`OTEL_EXPORTER_OTLP_*` variables): a span per HTTP request (OpenTelemetry's ASGI middleware),
per turn, per graph node and per model call (from LangChain's callbacks, with the GenAI
semantic conventions' attributes), and per checkpoint-store operation, linked into one tree.

Off by default, and then free: `TRACER` stays None and every hook returns at once. Spans carry
ids, sizes, durations and token counts — never message text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler

from threadline.observability.logs import REQUEST_ID

TRACER: Any = None  # an opentelemetry Tracer while tracing is on


def enable_tracing(provider: Any = None) -> Any:
    """Turn tracing on with `provider` (default: an SDK provider exporting over OTLP/HTTP as
    the `OTEL_*` variables say); returns the provider."""
    global TRACER
    if provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "threadline"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    TRACER = provider.get_tracer("threadline")
    return provider


def disable_tracing() -> None:
    global TRACER
    TRACER = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child of the current span (nothing when tracing is off)."""
    if TRACER is None:
        yield None
        return
    if request_id := REQUEST_ID.get():
        attributes["threadline.request_id"] = request_id
    with TRACER.start_as_current_span(name, attributes=attributes) as current:
        yield current


class GraphSpans(AsyncCallbackHandler):
    """Spans for the graph's nodes and model calls, parented along LangChain's run tree (the
    nearest traced ancestor run), under the span current when the run started (the turn's)."""

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self._trace = trace
        self._root = context.get_current()
        # LangChain may run callbacks outside the request's context: take its id now
        self._request_id = REQUEST_ID.get()
        self._spans: dict[UUID, Any] = {}
        self._traced_ancestor: dict[UUID, UUID | None] = {}  # every run → nearest traced run
        self._node_of: dict[UUID, str] = {}

    def _nearest(self, parent_run_id: UUID | None) -> UUID | None:
        if parent_run_id is None:
            return None
        return (
            parent_run_id
            if parent_run_id in self._spans
            else self._traced_ancestor.get(parent_run_id)
        )

    def _start(
        self, name: str, run_id: UUID, parent_run_id: UUID | None, **attributes: Any
    ) -> None:
        owner = self._nearest(parent_run_id)
        context = self._trace.set_span_in_context(self._spans[owner]) if owner else self._root
        if self._request_id:
            attributes["threadline.request_id"] = self._request_id
        self._spans[run_id] = TRACER.start_span(name, context=context, attributes=attributes)

    def _end(self, run_id: UUID, error: BaseException | None = None) -> None:
        self._traced_ancestor.pop(run_id, None)
        self._node_of.pop(run_id, None)
        if (current := self._spans.pop(run_id, None)) is None:
            return
        if error is not None:
            current.record_exception(error)
            status = self._trace.Status(self._trace.StatusCode.ERROR, type(error).__name__)
            current.set_status(status)
        current.end()

    async def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        node = (metadata or {}).get("langgraph_node")
        owner = self._nearest(parent_run_id)
        is_node = node is not None and kwargs.get("name") == node
        if is_node and (owner is None or self._node_of.get(owner) != node):
            self._start(f"node {node}", run_id, parent_run_id, **{"langgraph.node": node})
            self._node_of[run_id] = str(node)
        else:
            self._traced_ancestor[run_id] = owner

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    async def on_chat_model_start(
        self,
        serialized: Any,
        messages: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = invocation_params or {}
        model = params.get("model") or params.get("model_name")
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai"}
        if model:
            attributes["gen_ai.request.model"] = str(model)
        self._start(f"chat {model or 'model'}", run_id, parent_run_id, **attributes)

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        current = self._spans.get(run_id)
        if current is not None:
            if usage := _usage(response):
                current.set_attribute("gen_ai.usage.input_tokens", usage.get("input_tokens", 0))
                current.set_attribute("gen_ai.usage.output_tokens", usage.get("output_tokens", 0))
            if model := (getattr(response, "llm_output", None) or {}).get("model_name"):
                current.set_attribute("gen_ai.response.model", str(model))
        self._end(run_id)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)


def _usage(response: Any) -> dict[str, int]:
    for generations in getattr(response, "generations", None) or []:
        for generation in generations:
            message = getattr(generation, "message", None)
            if usage := getattr(message, "usage_metadata", None):
                return dict(usage)
    return {}


def asgi_middleware(provider: Any) -> Any:
    """OpenTelemetry's ASGI instrumentation, as a Starlette middleware class and options."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def with_request_id(current: Any, scope: Any) -> None:
        if current is not None and current.is_recording() and (request_id := REQUEST_ID.get()):
            current.set_attribute("threadline.request_id", request_id)

    options = {
        "tracer_provider": provider,
        "exclude_spans": ["receive", "send"],
        "server_request_hook": with_request_id,
    }
    return OpenTelemetryMiddleware, options
