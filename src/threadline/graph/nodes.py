"""The two nodes: `trim_or_summarize` (keeps the model inside its budget) and `model`.

The fold policy (`_fold`) is written once, as a generator that asks for summary calls; the
async and sync nodes only differ in how they make each call. A failed or slow summary call
never fails the turn: the view is trimmed instead, history and summary stay as they were (or
as far as earlier batches got), and no new attempt is made until the next human message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.constants import TAG_NOSTREAM
from langgraph.runtime import Runtime

from threadline.graph.context import Context, MemoryPolicy
from threadline.graph.deadline import run_with_deadline
from threadline.graph.memory import (
    BudgetTooSmallError,
    FoldPlan,
    View,
    check_budget,
    last_human_index,
    plan_fold,
)
from threadline.graph.state import ThreadState
from threadline.graph.summarizer import (
    SummaryBatch,
    capped_summary,
    summary_request,
    summary_text,
)
from threadline.graph.telemetry import StepFacts, budget_telemetry, log_telemetry
from threadline.graph.tokens import TokenCounter, tool_schema_tokens
from threadline.graph.views import RecentViews

log = logging.getLogger("threadline.memory")

SUMMARY_TAG = "threadline:summary"


@dataclass
class FoldOutcome:
    """Where one trim-or-summarize step got to; the state update is derived from it."""

    summary: str
    summarized_count: int
    plan: FoldPlan | None = None
    allowed: bool = True
    folded: int = 0
    calls: int = 0
    error: str | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SummaryCall:
    """One summary call the fold policy asks for, with the time left for it."""

    request: list[BaseMessage]
    seconds: float


FoldSteps = Generator[SummaryCall, BaseMessage | BaseException, dict[str, Any]]


@dataclass
class AgentNodes:
    """The agent's dependencies, resolved once per compiled graph."""

    policy: MemoryPolicy
    counter: TokenCounter
    model_factory: Callable[[], BaseChatModel]
    tools: Sequence[BaseTool] = ()
    _model: BaseChatModel | None = field(default=None, init=False, repr=False)
    _chat_model: Runnable[Any, BaseMessage] | None = field(default=None, init=False, repr=False)
    _tool_tokens: int | None = field(default=None, init=False, repr=False)
    _views: RecentViews = field(default_factory=RecentViews, init=False, repr=False)

    # -- dependencies -------------------------------------------------------------------------

    @property
    def model(self) -> BaseChatModel:
        """Created on first use, so importing and compiling the graph stay cheap and offline."""
        if self._model is None:
            self._model = self.model_factory()
        return self._model

    @property
    def chat_model(self) -> Runnable[Any, BaseMessage]:
        if self._chat_model is None:
            self._chat_model = self.model.bind_tools(self.tools) if self.tools else self.model
        return self._chat_model

    @property
    def summary_model(self) -> Runnable[Any, BaseMessage]:
        """Tagged so `stream_mode="messages"` never streams summary tokens to the user."""
        return self.model.with_config(tags=[TAG_NOSTREAM, SUMMARY_TAG], run_name="summarize")

    @property
    def tool_tokens(self) -> int:
        if self._tool_tokens is None:
            self._tool_tokens = tool_schema_tokens(self.tools, self.counter)
        return self._tool_tokens

    def resolve_policy(self, config: RunnableConfig, runtime: Runtime[Context]) -> MemoryPolicy:
        """The configured policy with this run's overrides; `InvalidOverrideError` if bad."""
        policy = self.policy.overridden(runtime.context, config.get("configurable") or {})
        try:
            check_budget(policy, self.counter, self.tool_tokens)
        except BudgetTooSmallError as exc:
            source = "the configured settings" if policy is self.policy else "this request"
            raise BudgetTooSmallError(f"{exc} (set by {source})") from None
        return policy

    def _summary_call_kwargs(self, timeout: float) -> dict[str, Any]:
        """OpenAI clients take a per-request timeout: an abandoned call then ends soon too."""
        from langchain_openai.chat_models.base import BaseChatOpenAI

        return {"timeout": timeout} if isinstance(self.model, BaseChatOpenAI) else {}

    # -- trim_or_summarize: shared steps ------------------------------------------------------

    def _start(self, state: ThreadState, policy: MemoryPolicy) -> FoldOutcome:
        messages = state["messages"]
        outcome = FoldOutcome(state.get("summary", ""), state.get("summarized_count", 0))
        outcome.plan = plan_fold(
            messages,
            outcome.summary,
            outcome.summarized_count,
            policy,
            self.counter,
            self.tool_tokens,
        )
        failed_turn = state.get("summary_failed_turn")
        outcome.allowed = failed_turn is None or failed_turn != last_human_index(messages)
        return outcome

    def _request(
        self, outcome: FoldOutcome, batch: SummaryBatch, policy: MemoryPolicy
    ) -> list[BaseMessage]:
        summary = capped_summary(outcome.summary, policy, self.counter)
        return summary_request(summary, batch.transcript, policy.summary_cap_tokens)

    def _remaining(self, outcome: FoldOutcome, policy: MemoryPolicy) -> float:
        """Time left of the step's summary deadline (one deadline for all its batches)."""
        return policy.summary_timeout_seconds - (time.monotonic() - outcome.started)

    def _accept(
        self, outcome: FoldOutcome, batch: SummaryBatch, reply: BaseMessage, policy: MemoryPolicy
    ) -> None:
        outcome.summary = capped_summary(summary_text(reply), policy, self.counter)
        outcome.folded += batch.end - outcome.summarized_count
        outcome.summarized_count = batch.end

    def _fail(self, outcome: FoldOutcome, exc: BaseException) -> None:
        outcome.error = type(exc).__name__
        log.warning("summary call failed (%s); trimming this turn instead", outcome.error)
        log.debug("summary call failure", exc_info=exc)

    def _finish(
        self, state: ThreadState, policy: MemoryPolicy, outcome: FoldOutcome
    ) -> dict[str, Any]:
        messages = state["messages"]
        view = self._build_view(messages, outcome.summary, outcome.summarized_count, policy)
        total_folds = state.get("total_folds", 0) + (1 if outcome.folded else 0)
        facts = StepFacts(
            transcript_messages=len(messages),
            summarized_messages=outcome.summarized_count,
            folded_this_turn=outcome.folded,
            total_folds=total_folds,
            summary_calls=outcome.calls,
            summary_seconds=time.monotonic() - outcome.started if outcome.calls else 0.0,
            tool_schema_tokens=self.tool_tokens,
            exact_count=self.counter.exact,
            unfolded_tokens=outcome.plan.unfolded_tokens if outcome.plan else None,
            summary_error=outcome.error,
        )
        telemetry = budget_telemetry(policy, view, facts)
        log_telemetry(telemetry)
        update: dict[str, Any] = {"telemetry": telemetry}
        if outcome.folded:
            update |= {
                "summary": outcome.summary,
                "summarized_count": outcome.summarized_count,
                "total_folds": total_folds,
            }
        if outcome.error is not None:
            update["summary_failed_turn"] = last_human_index(messages)
        return update

    def _fold(self, state: ThreadState, policy: MemoryPolicy) -> FoldSteps:
        """The step's policy, free of I/O: yields each summary call to make and is sent its
        reply (or the exception it raised); returns the state update. A failed call ends the
        folding: the view is trimmed instead."""
        outcome = self._start(state, policy)
        batches = outcome.plan.batches if outcome.plan is not None and outcome.allowed else []
        for batch in batches:
            outcome.calls += 1
            remaining = self._remaining(outcome, policy)
            if remaining <= 0:
                self._fail(outcome, TimeoutError("no time left for the summary call"))
                break
            reply = yield SummaryCall(self._request(outcome, batch, policy), remaining)
            try:
                if isinstance(reply, BaseException):
                    raise reply
                self._accept(outcome, batch, reply, policy)  # an empty reply raises too
            except Exception as exc:
                self._fail(outcome, exc)
                break
        return self._finish(state, policy, outcome)

    # -- trim_or_summarize: driving the policy, async or sync ---------------------------------

    async def atrim_or_summarize(
        self, state: ThreadState, config: RunnableConfig, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        steps = self._fold(state, self.resolve_policy(config, runtime))
        reply: BaseMessage | BaseException | None = None
        try:
            while True:
                call = steps.send(reply)  # type: ignore[arg-type]
                try:
                    kwargs = self._summary_call_kwargs(call.seconds)
                    pending = self.summary_model.ainvoke(call.request, **kwargs)
                    reply = await asyncio.wait_for(pending, call.seconds)
                except Exception as exc:
                    reply = exc
        except StopIteration as done:
            return done.value

    def trim_or_summarize(
        self, state: ThreadState, config: RunnableConfig, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        steps = self._fold(state, self.resolve_policy(config, runtime))
        reply: BaseMessage | BaseException | None = None
        try:
            while True:
                call = steps.send(reply)  # type: ignore[arg-type]
                try:
                    kwargs = self._summary_call_kwargs(call.seconds)
                    invoke = partial(self.summary_model.invoke, call.request, **kwargs)
                    reply = run_with_deadline(invoke, call.seconds, name="threadline-summary")
                except Exception as exc:
                    reply = exc
        except StopIteration as done:
            return done.value

    # -- model --------------------------------------------------------------------------------

    def _build_view(
        self, messages: Sequence[BaseMessage], summary: str, count: int, policy: MemoryPolicy
    ) -> View:
        return self._views.view(messages, summary, count, policy, self.counter, self.tool_tokens)

    def _view(self, state: ThreadState, policy: MemoryPolicy) -> list[BaseMessage]:
        summary, count = state.get("summary", ""), state.get("summarized_count", 0)
        return self._build_view(state["messages"], summary, count, policy).messages

    async def acall_model(
        self, state: ThreadState, config: RunnableConfig, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        view = self._view(state, self.resolve_policy(config, runtime))
        reply = await self.chat_model.ainvoke(view, config)
        return {"messages": [reply]}

    def call_model(
        self, state: ThreadState, config: RunnableConfig, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        view = self._view(state, self.resolve_policy(config, runtime))
        reply = self.chat_model.invoke(view, config)
        return {"messages": [reply]}
