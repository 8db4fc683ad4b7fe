"""Every private name of LangGraph and langchain-openai that threadline relies on, in one place.

They can move in any release: an upgrade that breaks one fails `tests/test_compat.py` by name
instead of somewhere deep in a turn. Import them from here, never from upstream directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph._internal._constants import NS_SEP
from langgraph._internal._runnable import RunnableCallable
from langgraph._internal._typing import MISSING
from langgraph.checkpoint.postgres.base import _garbage_blobs as garbage_blobs
from langgraph.checkpoint.serde.types import _DeltaSnapshot as DeltaSnapshot


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
    "garbage_blobs",
    "openai_wire_converters",
]
