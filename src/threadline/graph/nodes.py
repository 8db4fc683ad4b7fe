"""The two nodes: `trim_or_summarize` (keeps the model inside its budget) and `model`.

Both come as sync/async pairs over the same pure policy in `memory.py`; only the model calls
differ. A failed or slow summary call never fails the turn: the view is trimmed instead and
the summary stays as it was, to be tried again on a later turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime

from threadline.graph.context import Context, MemoryPolicy
from threadline.graph.memory import View, build_view, fold_batches, plan_fold
from threadline.graph.state import BudgetTelemetry, ThreadState
from threadline.graph.summarizer import aextend_summary, extend_summary
from threadline.graph.tokens import TokenCounter

log = logging.getLogger("threadline.memory")

SUMMARY_PROMPT_RESERVE = 400  # instructions + framing of a summary request


@dataclass
class Fold:
    """The outcome of one trim-or-summarize step."""

    summary: str
    summarized_count: int
    folded: int = 0
    error: str | None = None


@dataclass
class AgentNodes:
    """The agent's dependencies, resolved once per compiled graph."""

    policy: MemoryPolicy
    counter: TokenCounter
    model_factory: Callable[[], BaseChatModel]
    tools: Sequence[BaseTool] = ()
    _model: BaseChatModel | None = field(default=None, init=False, repr=False)
    _chat_model: Any = field(default=None, init=False, repr=False)

    # -- dependencies -------------------------------------------------------------------------

    @property
    def model(self) -> BaseChatModel:
        """Created on first use, so importing and compiling the graph stay cheap and offline."""
        if self._model is None:
            self._model = self.model_factory()
        return self._model

    @property
    def chat_model(self) -> Any:
        if self._chat_model is None:
            self._chat_model = self.model.bind_tools(self.tools) if self.tools else self.model
        return self._chat_model

    def resolve_policy(self, config: RunnableConfig, runtime: Runtime[Context]) -> MemoryPolicy:
        return self.policy.overridden(runtime.context, config.get("configurable", {}))

    # -- trim_or_summarize --------------------------------------------------------------------

    def _fold_plan(
        self, state: ThreadState, policy: MemoryPolicy
    ) -> tuple[Fold, list[tuple[int, int]]]:
        messages = state["messages"]
        current = Fold(state.get("summary", ""), state.get("summarized_count", 0))
        target = plan_fold(
            messages, current.summary, current.summarized_count, policy, self.counter
        )
        if target is None:
            return current, []
        batch_tokens = max(policy.max_context_tokens - policy.summary_max_tokens, 256)
        batch_tokens -= SUMMARY_PROMPT_RESERVE
        batches = fold_batches(
            messages, current.summarized_count, target, max(batch_tokens, 128), self.counter
        )
        return current, batches

    def _finish(self, state: ThreadState, policy: MemoryPolicy, fold: Fold) -> dict[str, Any]:
        view = build_view(
            state["messages"], fold.summary, fold.summarized_count, policy, self.counter
        )
        total_folds = state.get("total_folds", 0) + (1 if fold.folded else 0)
        telemetry = self._telemetry(state, policy, fold, view, total_folds)
        log.info(
            "context budget: %(view_tokens)d/%(budget)d tokens (%(percent_used).1f%%), "
            "%(folded_this_turn)d folded, %(total_folds)d folds",
            dict(telemetry),
        )
        update: dict[str, Any] = {"telemetry": telemetry}
        if fold.folded:
            update |= {
                "summary": fold.summary,
                "summarized_count": fold.summarized_count,
                "total_folds": total_folds,
            }
        return update

    def _telemetry(
        self,
        state: ThreadState,
        policy: MemoryPolicy,
        fold: Fold,
        view: View,
        total_folds: int,
    ) -> BudgetTelemetry:
        summary_tokens = self.counter.count_message(AIMessage(fold.summary)) if fold.summary else 0
        telemetry = BudgetTelemetry(
            view_tokens=view.tokens,
            budget=policy.max_context_tokens,
            percent_used=round(100 * view.tokens / policy.max_context_tokens, 1),
            view_messages=len(view.messages),
            transcript_messages=len(state["messages"]),
            folded_this_turn=fold.folded,
            total_folds=total_folds,
            summary_tokens=summary_tokens,
            strategy=policy.memory_strategy,
        )
        if fold.error:
            telemetry["summary_error"] = fold.error
        return telemetry

    def _record_failure(self, fold: Fold, exc: BaseException) -> None:
        fold.error = type(exc).__name__
        log.warning("summary call failed (%s: %s); trimming this turn instead", fold.error, exc)

    def _apply(self, fold: Fold, end: int, summary: str) -> None:
        fold.folded += end - fold.summarized_count
        fold.summary, fold.summarized_count = summary, end

    async def atrim_or_summarize(
        self, state: ThreadState, config: RunnableConfig, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        policy = self.resolve_policy(config, runtime)
        fold, batches = self._fold_plan(state, policy)
        for start, end in batches:
            try:
                summary = await asyncio.wait_for(
                    aextend_summary(
                        self.model,
                        fold.summary,
                        state["messages"][start:end],
                        policy.summary_max_tokens,
                    ),
                    timeout=policy.summary_timeout_seconds,
                )
            except Exception as exc:
                self._record_failure(fold, exc)
                break
            self._apply(fold, end, self._capped(summary, policy))
        return self._finish(state, policy, fold)

    def trim_or_summarize(
        self, state: ThreadState, config: RunnableConfig, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        policy = self.resolve_policy(config, runtime)
        fold, batches = self._fold_plan(state, policy)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="threadline-summary")
        try:
            for start, end in batches:
                future = pool.submit(
                    extend_summary,
                    self.model,
                    fold.summary,
                    state["messages"][start:end],
                    policy.summary_max_tokens,
                )
                try:
                    summary = future.result(timeout=policy.summary_timeout_seconds)
                except (Exception, FutureTimeout) as exc:
                    self._record_failure(fold, exc)
                    break
                self._apply(fold, end, self._capped(summary, policy))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a hung call must not hold the turn
        return self._finish(state, policy, fold)

    def _capped(self, summary: str, policy: MemoryPolicy) -> str:
        from threadline.graph.memory import cut_to_fit

        message = cut_to_fit(AIMessage(summary), policy.summary_max_tokens, self.counter)
        return str(message.content)

    # -- model --------------------------------------------------------------------------------

    def _view(self, state: ThreadState, policy: MemoryPolicy) -> list[BaseMessage]:
        return build_view(
            state["messages"],
            state.get("summary", ""),
            state.get("summarized_count", 0),
            policy,
            self.counter,
        ).messages

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
