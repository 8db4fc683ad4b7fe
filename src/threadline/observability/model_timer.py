"""Model-call durations from LangChain's callbacks: no change to the graph's nodes."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler

from threadline.observability.metrics import MODEL_DURATION


class ModelTimer(AsyncCallbackHandler):
    """Observes `threadline_model_duration_seconds` for every chat-model call of a run."""

    def __init__(self) -> None:
        self._started: dict[UUID, float] = {}

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._started[run_id] = time.perf_counter()

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if (started := self._started.pop(run_id, None)) is not None:
            MODEL_DURATION.observe(time.perf_counter() - started)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        await self.on_llm_end(None, run_id=run_id)
