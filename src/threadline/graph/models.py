"""The offline chat model (`THREADLINE_MODEL=fake`); `threadline.assembly` picks the model."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from threadline.graph.prompts import SUMMARY_HEADER, SUMMARY_INSTRUCTIONS

_FOLDED_COUNT = re.compile(r"^- Turns folded: (\d+)$", re.MULTILINE)
_FIRST_FOLDED = re.compile(r"^- Turn 1: the user said (.*)$", re.MULTILINE)
_NEW_TURN_LINE = re.compile(r"^User: (.*)$", re.MULTILINE)
_WORDS = re.compile(r"\s*\S+")


class OfflineChatModel(BaseChatModel):
    """A deterministic model for demos and tests: no network, replies show memory at work.

        Each reply names the turn it answers (counting turns folded into the summary) and quotes
        the first thing the user said that it can still see, so a person watching sees the thread
        being remembered. Asked to summarise, it keeps the first message, the count of folded turns
    and the latest folded message: a summary that stays small however long the thread.
    """

    @property
    def _llm_type(self) -> str:
        return "threadline-offline"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> OfflineChatModel:
        return self  # never calls tools: replies are text only

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._text(messages)))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Word by word, so streaming is visible (and testable) offline too."""
        for word in _WORDS.findall(self._text(messages)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=word))
            if run_manager is not None:
                run_manager.on_llm_new_token(word, chunk=chunk)
            yield chunk

    def _text(self, messages: list[BaseMessage]) -> str:
        if messages and str(messages[0].content).startswith(SUMMARY_INSTRUCTIONS[:60]):
            return self._summarise(messages)
        return self._reply(messages)

    @staticmethod
    def _summarise(messages: list[BaseMessage]) -> str:
        request = str(messages[-1].content)
        existing, _, new_turns = request.partition("New turns to fold in:")
        said = [text[:60] for text in _NEW_TURN_LINE.findall(new_turns)]
        first = _FIRST_FOLDED.search(existing)
        count = _FOLDED_COUNT.search(existing)
        folded = (int(count.group(1)) if count else 0) + len(said)
        opening = first.group(1) if first else repr(said[0]) if said else "nothing yet"
        lines = [f"- Turn 1: the user said {opening}", f"- Turns folded: {folded}"]
        if said and folded > 1:
            lines.append(f"- Turn {folded}: the user said {said[-1]!r}")
        return "\n".join(lines)

    @staticmethod
    def _reply(messages: list[BaseMessage]) -> str:
        summary = next(
            (
                str(m.content)
                for m in messages
                if isinstance(m, SystemMessage) and str(m.content).startswith(SUMMARY_HEADER)
            ),
            "",
        )
        count = _FOLDED_COUNT.search(summary)
        said = [str(m.content) for m in messages if isinstance(m, HumanMessage)]
        turn = (int(count.group(1)) if count else 0) + len(said)
        if not said:
            return f"[turn {turn}] (no user message)"
        first_folded = _FIRST_FOLDED.search(summary)
        first = first_folded.group(1) if first_folded else repr(said[0][:80])
        return f"[turn {turn}] You said {said[-1][:200]!r}. Your first message: {first}."
