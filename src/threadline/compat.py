"""Every private name of LangGraph and langchain-openai that threadline relies on, and the one
behaviour of psycopg_pool it changes, in one place.

They can move in any release: an upgrade that breaks one fails `tests/test_compat.py` by name
instead of somewhere deep in a turn. Import them from here, never from upstream directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg_pool.pool_async
from langgraph._internal._constants import NS_SEP
from langgraph._internal._runnable import RunnableCallable
from langgraph._internal._typing import MISSING
from langgraph.checkpoint.postgres.base import _garbage_blobs as garbage_blobs
from langgraph.checkpoint.serde.types import _DeltaSnapshot as DeltaSnapshot
from psycopg_pool.base import AttemptWithBackoff


class _CappedBackoff(AttemptWithBackoff):
    """psycopg_pool's retry delay (after a failed connection check, and between reconnection
    attempts), from 0.1 s and at most 1 s instead of from 1 s and doubling without a bound: after a
    database restart each dead pooled connection cost a caller a second, and after a longer
    outage the pool waited many seconds past the database's return."""

    INITIAL_DELAY = 0.1
    MAX_DELAY = 1.0

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)


def cap_pool_retry_delays() -> None:
    """Use `_CappedBackoff` in every psycopg pool of this process (idempotent)."""
    psycopg_pool.pool_async.AttemptWithBackoff = _CappedBackoff  # type: ignore[misc]


def openai_wire_converters() -> tuple[Callable[[Any], Any], Callable[[Any], dict[str, Any]]]:
    """langchain-openai's (v1 AI message -> Chat Completions form, message -> wire dict).

    Imported on use: langchain-openai is only needed when counting tokens like OpenAI does.
    """
    from langchain_openai.chat_models._compat import _convert_from_v1_to_chat_completions
    from langchain_openai.chat_models.base import _convert_message_to_dict

    return _convert_from_v1_to_chat_completions, _convert_message_to_dict


__all__ = [
    "MISSING",
    "NS_SEP",
    "DeltaSnapshot",
    "RunnableCallable",
    "cap_pool_retry_delays",
    "garbage_blobs",
    "openai_wire_converters",
]
