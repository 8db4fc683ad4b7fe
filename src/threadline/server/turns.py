"""Running one turn: replay a retried turn, or run the graph and store the turn whole.

`TurnRunner` is the only place the server runs the graph; `ServedAgent` is the runnable LangServe
serves, declaring `thread_id` and the memory overrides in its config schema so LangServe keeps
them per request (and per `/batch` entry) instead of dropping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Literal, get_args

import anyio
from fastapi import HTTPException
from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.runnables.utils import ConfigurableFieldSpec
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel

from threadline.checkpointers.records import ARCHIVED
from threadline.graph.context import InvalidOverrideError
from threadline.graph.memory import BudgetTooSmallError
from threadline.observability import tracing
from threadline.observability.metrics import REPLAYS, TURN_DURATION, TURNS, observe_telemetry
from threadline.observability.model_timer import ModelTimer
from threadline.observability.tracing import GraphSpans, span
from threadline.privacy import Protector
from threadline.privacy.names import CLEAR, ThreadNaming
from threadline.retention import ThreadKeeper
from threadline.rules import MIN_CONTEXT_TOKENS, Strategy
from threadline.server.held import release_turn, running_turn
from threadline.server.idempotency import previous_result, turn_receipts
from threadline.server.ownership import RecordOut, check_turn_owner, records_of, turn_record
from threadline.server.refusals import failures_counted
from threadline.server.responses import ReplyChunk, TurnOutput, TurnOutputSchema, turn_output
from threadline.server.staged import StagedSaver

DEFAULT_RECEIPT_LIFETIME_SECONDS = 24 * 3600
log = logging.getLogger("threadline.server")

TURN_CONFIG_SPECS = [
    ConfigurableFieldSpec(
        id="thread_id",
        annotation=str | None,
        name="Thread",
        description="The conversation; 1-128 characters of letters, digits and . _ : @ -",
        default=None,
    ),
    ConfigurableFieldSpec(
        id="user_id",
        annotation=str | None,
        name="User",
        description="The end user taking the turn (or the X-User-Id header); a thread's first "
        "turn makes its user the owner.",
        default=None,
    ),
    ConfigurableFieldSpec(
        id="system_prompt",
        annotation=str | None,
        description="Overrides the system prompt for this turn.",
        default=None,
    ),
    ConfigurableFieldSpec(
        id="max_context_tokens",
        annotation=int | None,
        description=f"Overrides the context budget for this turn (>= {MIN_CONTEXT_TOKENS}).",
        default=None,
    ),
    ConfigurableFieldSpec(
        id="memory_strategy",
        annotation=Literal[get_args(Strategy)] | None,
        description="`summarize` or `trim` for this turn.",
        default=None,
    ),
]


class ThreadArchivedError(Exception):
    """A turn was sent to an archived thread."""


@contextlib.contextmanager
def counted_turn() -> Iterator[None]:
    """Count the turn by outcome and time it; a refused or failed one is logged with its
    cause (never its text)."""
    started = time.perf_counter()
    with failures_counted(), span("turn"):
        yield
    TURNS.labels(outcome="ok").inc()
    TURN_DURATION.observe(time.perf_counter() - started)


def timed(config: RunnableConfig) -> RunnableConfig:
    """`config` with the model-call timer (and, when tracing, the graph's spans) among its
    callbacks."""
    handlers: list[Any] = [ModelTimer()]
    if tracing.TRACER is not None:
        handlers.append(GraphSpans())
    return merge_configs(config, {"callbacks": handlers})


@contextlib.contextmanager
def graph_errors() -> Iterator[None]:
    """Turn failures the caller can act on into their HTTP status; the rest stay 500s."""
    import openai

    try:
        yield
    except InvalidOverrideError as exc:
        raise HTTPException(422, str(exc)) from None
    except ThreadArchivedError:
        raise HTTPException(
            409, "the thread is archived: restore it first (POST /threads/{thread_id}/restore)"
        ) from None
    except BudgetTooSmallError as exc:
        raise HTTPException(422, f"max_context_tokens is too small: {exc}") from None
    except openai.APIError as exc:
        log.warning("model call failed: %s", type(exc).__name__)
        raise HTTPException(502, f"the model call failed ({type(exc).__name__})") from None


class TurnRunner:
    """Runs turns on a graph compiled with the real saver."""

    def __init__(
        self,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        *,
        receipt_lifetime_seconds: float = DEFAULT_RECEIPT_LIFETIME_SECONDS,
        keeper: ThreadKeeper | None = None,
        restore_on_turn: bool = False,
        protector: Protector | None = None,
        model_sees_protected: bool = False,
        naming: ThreadNaming = CLEAR,
    ) -> None:
        self.graph = graph
        self.naming = naming  # how thread ids and tenants are stored
        self.receipt_lifetime_seconds = receipt_lifetime_seconds
        self.keeper = keeper
        self.restore_on_turn = restore_on_turn
        self.protector = protector
        self.model_sees_protected = model_sees_protected
        self._turns: set[asyncio.Future[None]] = set()  # streamed turns still running

    async def previous(self, input: Any, config: RunnableConfig) -> dict[str, Any] | None:
        """The first result of a retried turn (None for a new turn); 404 for a non-owner, 422
        for a key reused on another request (counted here: in a stream they reach no handler)."""
        with failures_counted():
            await check_turn_owner(self.graph.checkpointer, config)
            found = await previous_result(self.graph, config, input)
        if found is not None:
            TURNS.labels(outcome="replayed").inc()
            REPLAYS.inc()
        return found

    def _staged(self, config: RunnableConfig, input: Any) -> tuple[Any, StagedSaver, Any]:
        """The graph on a staging saver, and the receipts its commit will record (taken
        before the run: the graph gives id-less input messages their ids in place)."""
        saver = self.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        staged = StagedSaver(saver, on_no_checkpoint=self._unarchive, protector=self.protector)
        receipts = turn_receipts(config, input, self.receipt_lifetime_seconds)
        return self.graph.copy({"checkpointer": staged}), staged, receipts

    async def _unarchive(self, thread_key: str) -> bool:
        """A turn found no checkpoint: a new thread, or an archived one, which is restored
        (`THREADLINE_RESTORE_ON_TURN`) or refused. True if it was restored."""
        record = await records_of(self.graph.checkpointer).aget_thread_record(thread_key)
        if record is None or record.status != ARCHIVED:
            return False
        if not self.restore_on_turn or self.keeper is None:
            raise ThreadArchivedError(thread_key)
        await self.keeper.restore(thread_key)
        return True

    def screened(self, input: Any) -> Any:
        """The turn's input as the graph gets it: refused (422) if it holds sensitive values
        under `block`; protected if the model is to see only the protected form."""
        if self.protector is None:
            return input
        if self.protector.strategy == "block":
            if found := self.protector.findings(input):
                raise HTTPException(
                    422,
                    "the message holds sensitive data and was not stored: "
                    + ", ".join(sorted(found)),
                )
            return input
        if self.model_sees_protected:
            return self.protector.value(input, Counter())
        return input

    @staticmethod
    async def _commit(
        staged: StagedSaver, config: RunnableConfig, receipts: dict[str, Any], state: Any
    ) -> None:
        """Store the turn, its receipts and its thread's record, in the saver's one write."""
        final = {**receipts, **turn_record(config, state)}
        with anyio.CancelScope(shield=True):  # a turn that finished is stored, disconnect or not
            protected = await staged.commit(final)
        if protected:
            log.info("turn stored with sensitive values protected: %s", dict(protected))
        telemetry = dict(state.get("telemetry") or {}) if isinstance(state, Mapping) else {}
        observe_telemetry({**telemetry, "pii_detections": dict(protected)})

    async def invoke(self, input: Any, config: RunnableConfig) -> dict[str, Any]:
        """The first result of a retried turn, or the state a new turn stored."""
        if (previous := await self.previous(input, config)) is not None:
            return previous
        return await self.run(input, config)

    async def run(self, input: Any, config: RunnableConfig) -> dict[str, Any]:
        """Run and store a new turn (callers check `previous` first)."""
        with counted_turn():
            graph, staged, receipts = self._staged(config, input)
            screened = self.screened(input)
            with graph_errors():
                output = await graph.ainvoke(screened, timed(config), durability="exit")
            await self._commit(staged, config, receipts, output)
            return dict(output)

    async def stream(self, input: Any, config: RunnableConfig, **kwargs: Any) -> AsyncIterator[Any]:
        """The graph's stream for a new turn (callers check `previous` first).

        The turn runs in a task of its own, so it is run, stored and its thread released
        however slowly the client reads (or if it leaves). The last chunk (the state with the
        reply) is held back until the turn is stored: a client never receives a final state
        the thread does not hold. If storing fails, the stream raises and ends with an error
        event instead.
        """
        with failures_counted():  # a refusal here is inside the stream: no handler sees it
            graph, staged, receipts = self._staged(config, input)
            screened = self.screened(input)
        chunks: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        wanted = kwargs.pop("stream_mode", "values")
        modes = [wanted] if isinstance(wanted, str) else list(wanted)

        async def run() -> None:
            final: Any = {}
            try:
                with counted_turn(), graph_errors():
                    async for mode, chunk in graph.astream(
                        screened,
                        timed(config),
                        durability="exit",
                        stream_mode=list(dict.fromkeys([*modes, "values"])),
                        **kwargs,
                    ):
                        if mode == "values":  # the state, for the thread's record
                            final = chunk
                        if mode in modes:
                            item = chunk if isinstance(wanted, str) else (mode, chunk)
                            chunks.put_nowait(("chunk", item))
                    await self._commit(staged, config, receipts, final)
                chunks.put_nowait(("stored", None))
            except BaseException as exc:
                chunks.put_nowait(("failed", exc))
                if not isinstance(exc, Exception):
                    raise
            finally:
                with anyio.CancelScope(shield=True):
                    await release_turn()

        task = asyncio.ensure_future(run())
        running_turn(task)
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)
        held: list[Any] = []
        while True:
            kind, item = await chunks.get()
            if kind == "failed":
                raise item
            if kind == "stored":
                break
            if held:
                yield held.pop()
            held.append(item)
        for chunk in held:
            yield chunk


class ServedAgent(Runnable[dict[str, Any], dict[str, Any]]):
    """The agent as LangServe serves it at /agent: the graph's input, a turn-sized output.

    `invoke` answers with what the turn added (`responses.TurnOutput`), so a response does not
    grow with the thread. `stream` yields the reply as the model produces it (`ReplyChunk`s:
    tokens), then, once the turn is stored, the same `TurnOutput` as `invoke`; a replayed turn
    streams only that last chunk.
    """

    name = "threadline"

    def __init__(
        self, graph: CompiledStateGraph[Any, Any, Any, Any], runner: Callable[[], TurnRunner]
    ) -> None:
        self._graph = graph
        self._runner = runner  # the running lifespan's turn runner

    @property
    def InputType(self) -> Any:
        return self._graph.InputType

    @property
    def OutputType(self) -> Any:
        return TurnOutput

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self._graph.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return TurnOutputSchema

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return TURN_CONFIG_SPECS

    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        raise NotImplementedError("served turns run on the event loop: use ainvoke")

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._acall_with_config(self._invoke_turn, input, config)  # type: ignore[arg-type]

    async def _output(
        self, state: Any, input: Any, config: RunnableConfig, *, stored: bool
    ) -> dict[str, Any]:
        """The turn's output; `stored`: this process just stored the turn, so the saver holds
        the record its write left (no read back) where it can tell."""
        records = records_of(self._runner().graph.checkpointer)
        key = config["configurable"]["thread_id"]
        record = (records.take_written_record(key) if stored else None) or (
            await records.aget_thread_record(key)
        )
        return dict(turn_output(state, input, RecordOut.of(record) if record else None))

    async def _invoke_turn(self, input: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        sent = _sent(input)
        runner = self._runner()
        if (previous := await runner.previous(input, config)) is not None:
            return await self._output(previous, sent, config, stored=False)
        state = await runner.run(input, config)
        return await self._output(state, sent, config, stored=True)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async def one() -> AsyncIterator[dict[str, Any]]:
            yield input

        async for chunk in self._atransform_stream_with_config(
            one(),
            self._stream_turn,  # type: ignore[arg-type]
            config,
        ):
            yield chunk

    async def _stream_turn(
        self, inputs: AsyncIterator[dict[str, Any]], config: RunnableConfig
    ) -> AsyncIterator[dict[str, Any]]:
        runner = self._runner()
        input = [item async for item in inputs][-1]
        sent = _sent(input)
        if (previous := await runner.previous(input, config)) is not None:
            yield await self._output(previous, sent, config, stored=False)
            return
        state: Any = {}
        async for mode, chunk in runner.stream(input, config, stream_mode=["messages", "values"]):
            if mode == "values":
                state = chunk
                continue
            message, metadata = chunk
            if metadata.get("langgraph_node") == "model" and isinstance(message, AIMessageChunk):
                yield dict(ReplyChunk(messages=[message]))
        yield await self._output(state, sent, config, stored=True)


def _sent(input: Any) -> dict[str, Any]:
    """The input's messages as sent (the graph gives id-less ones ids in place)."""
    messages = input.get("messages") if isinstance(input, dict) else None
    return {"messages": [m.model_copy() if isinstance(m, BaseModel) else m for m in messages or []]}
