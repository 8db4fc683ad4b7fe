"""Settings → the agent: the one place `THREADLINE_*` becomes a chat model, a memory policy,
a token counter, a PII protector, and retention's operations on the configured store. The graph
(`threadline.graph`) takes those as arguments and reads no settings; the composition roots
(CLI, server, `threadline.studio`, `threadline.embedding`) come here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from threadline.graph.agent import GRAPH_NAME, build_graph
from threadline.graph.context import Context, MemoryPolicy
from threadline.graph.models import OfflineChatModel
from threadline.graph.state import InputState, ThreadState
from threadline.graph.tokens import make_token_counter
from threadline.privacy import Detector, Protector
from threadline.privacy.names import CLEAR, ThreadNaming, derived_id_key
from threadline.settings import FAKE_MODEL, Settings

if TYPE_CHECKING:
    from threadline.locks import TurnLocks
    from threadline.retention import ThreadKeeper

ModelOrFactory = BaseChatModel | Callable[[], BaseChatModel]


def chat_model(settings: Settings) -> BaseChatModel:
    """The configured model. `OPENAI_API_KEY` / `OPENAI_BASE_URL` reach `ChatOpenAI` as usual."""
    if settings.model == FAKE_MODEL:
        return OfflineChatModel()
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=settings.model_name, timeout=settings.model_timeout_seconds, max_retries=2
    )


def memory_policy(settings: Settings) -> MemoryPolicy:
    """The budget and summary settings, as the graph's memory policy."""
    names = {f.name for f in dataclasses.fields(MemoryPolicy)}
    return MemoryPolicy(**{name: getattr(settings, name) for name in names})


def agent_builder(
    settings: Settings | None = None,
    *,
    model: ModelOrFactory | None = None,
    policy: MemoryPolicy | None = None,
    tools: Sequence[BaseTool] = (),
) -> StateGraph[ThreadState, Context, InputState, ThreadState]:
    """The uncompiled agent, from `settings` (default: the environment's) and any overrides.

    The model is only created when the first turn needs it.
    """
    settings = settings or Settings.from_env()
    configured = settings
    model_name = getattr(model, "model_name", None)  # count with a given model's tokenizer
    return build_graph(
        model=model if model is not None else (lambda: chat_model(configured)),
        policy=policy or memory_policy(settings),
        counter=make_token_counter(
            model_name if isinstance(model_name, str) else settings.model_name,
            settings.token_counter,
        ),
        tools=tools,
    )


def make_graph(
    checkpointer: BaseCheckpointSaver | None = None,
    settings: Settings | None = None,
    *,
    model: ModelOrFactory | None = None,
    policy: MemoryPolicy | None = None,
    tools: Sequence[BaseTool] = (),
) -> CompiledStateGraph[ThreadState, Context, InputState, ThreadState]:
    """The compiled agent, persisting through `checkpointer` when one is given."""
    builder = agent_builder(settings, model=model, policy=policy, tools=tools)
    return builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)


def protector(settings: Settings) -> Protector | None:
    """What replaces sensitive values before a turn is stored (None when PII handling is off)."""
    if settings.pii_strategy == "off":
        return None
    import hashlib
    import hmac

    secret = settings.pii_key.get_secret_value() if settings.pii_key else settings.encryption_secret
    key = hmac.new(secret.encode(), b"threadline pii", hashlib.sha256).digest() if secret else b""
    detector = Detector(settings.pii_entity_names, settings.pii_custom)
    return Protector(settings.pii_strategy, detector, key)


def thread_naming(settings: Settings) -> ThreadNaming:
    """Thread ids and tenants hashed in storage when encryption is on (see `privacy.names`)."""
    if settings.aes_key is None and settings.aes_keys is None:
        return CLEAR
    if settings.id_key is not None:
        return ThreadNaming(settings.id_key.get_secret_value().encode())
    assert settings.aes_key is not None, "a key ring needs THREADLINE_ID_KEY (settings.check)"
    return ThreadNaming(derived_id_key(settings.aes_key.get_secret_value()).encode())


@asynccontextmanager
async def open_keeper(settings: Settings) -> AsyncIterator[tuple[ThreadKeeper, TurnLocks]]:
    """Retention's operations on the configured store, and the server's turn locks, so that
    what a command does to a thread waits for a turn a server is running on it."""
    from threadline.audit import open_audit_log
    from threadline.checkpointers import open_checkpointer
    from threadline.locks import open_turn_locks
    from threadline.retention import ThreadKeeper, open_archive

    async with open_turn_locks(settings) as locks, open_checkpointer(settings) as saver:
        graph = make_graph(saver, settings)
        archive = open_archive(settings.archive_url)
        yield ThreadKeeper(graph, archive, open_audit_log(settings)), locks
