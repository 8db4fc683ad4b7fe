"""Admitting a turn: who asks, on which threads, within which limits, holding which locks.

Runs as a FastAPI dependency on the LangServe routes, before LangServe reads the request, so a
busy thread is a 409 and an oversized request a 413 before any response (or stream) starts. The
dependency lives as long as the request, so a thread stays locked until its stream has ended.
LangServe then calls `agent_config` once per run config to put the tenant-scoped thread into it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request

from threadline.graph.context import InvalidOverrideError, MemoryPolicy
from threadline.locks import LockBackendError, ThreadBusyError
from threadline.observability.metrics import LOCK_WAIT
from threadline.privacy.names import CLEAR, ThreadNaming
from threadline.server.auth import authenticate
from threadline.server.held import HELD, HeldThreads
from threadline.server.idempotency import (
    IDEMPOTENCY_CONFIG_KEY,
    IDEMPOTENCY_HEADER,
    validate_idempotency_key,
)
from threadline.server.limits import Limits, check_turn_input, json_body
from threadline.server.serving import ServingSlot
from threadline.server.threads import (
    TENANT_CONFIG_KEY,
    THREAD_HEADER,
    THREAD_ID_CONFIG_KEY,
    USER_CONFIG_KEY,
    USER_HEADER,
    one_of,
    scoped_thread_key,
    validate_thread_id,
    validate_user_id,
)

TURN_ENDPOINTS = frozenset({"invoke", "batch", "stream", "stream_events", "stream_log"})
STREAM_ENDPOINTS = frozenset({"stream", "stream_events", "stream_log"})


@dataclass
class Admission:
    """What admitting a turn needs; one per app, kept on `app.state.admission`."""

    limits: Limits
    policy: MemoryPolicy
    lock_timeout: float
    serving: ServingSlot
    naming: ThreadNaming = CLEAR

    def held(self, keys: list[str]) -> Any:
        return self.serving.current.locks.hold(keys, self.lock_timeout)


async def hold_threads(stack: AsyncExitStack, admission: Admission, keys: list[str]) -> None:
    """Lock `keys` for the rest of the request, or answer 409 (busy) / 503 (lock store down)."""
    if not keys:
        return
    started = time.perf_counter()
    try:
        await stack.enter_async_context(admission.held(keys))
    except ThreadBusyError:
        LOCK_WAIT.observe(time.perf_counter() - started)
        raise HTTPException(
            409,
            f"the thread is busy with another turn (waited {admission.lock_timeout:g}s); "
            "retry later",
        ) from None
    except LockBackendError as exc:
        raise HTTPException(503, str(exc)) from None
    LOCK_WAIT.observe(time.perf_counter() - started)


@asynccontextmanager
async def turn_held(
    admission: Admission, keys: list[str], *, streamed: bool
) -> AsyncIterator[None]:
    """Hold the request's threads (409 busy / 503 lock store down) until its response ends,
    or, for a stream, until its turn is stored (`release_turn`): a client reading slowly, or
    not at all, never keeps its thread (or a lock connection) past its turn. A turn still
    running when its client has gone keeps the threads until it ends."""
    stack = AsyncExitStack()
    await hold_threads(stack, admission, keys)  # a refusal is counted where it is answered
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await stack.aclose()

    held = HeldThreads(release)
    HELD.set(held if streamed else None)
    try:
        yield
    finally:
        HELD.set(None)
        if held.turn is None or held.turn.done():
            await release()
        # else: the turn releases them as it ends (`release_turn`)


def requested_thread(config: Any, header: str | None) -> str:
    """The thread a run config names, else the header's; 422 if neither is a valid thread."""
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    sent = configurable.get("thread_id") if isinstance(configurable, Mapping) else None
    sent = one_of("thread_id", sent, header, THREAD_HEADER)
    if sent is None:
        raise HTTPException(
            422,
            f"a thread is required: config.configurable.thread_id or the {THREAD_HEADER} header",
        )
    return validate_thread_id(sent)


def agent_threads(endpoint: str, body: Any, request: Request, admission: Admission) -> list[str]:
    """The threads an /agent request runs turns on, one per run, checking each run's input."""
    if not isinstance(body, Mapping):
        raise HTTPException(422, "request body must be a JSON object")
    header = request.headers.get(THREAD_HEADER)
    if endpoint != "batch":
        check_turn_input(body.get("input"), admission.limits)
        return [requested_thread(body.get("config"), header)]
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise HTTPException(422, "`inputs` must be a list")
    if len(inputs) > admission.limits.max_messages:
        raise HTTPException(
            413, f"{len(inputs)} inputs in one batch; the limit is {admission.limits.max_messages}"
        )
    for input in inputs:
        check_turn_input(input, admission.limits)
    config = body.get("config")
    if isinstance(config, list):
        if len(config) != len(inputs):
            raise HTTPException(
                422, f"{len(config)} configs for {len(inputs)} inputs: send one per input"
            )
        threads = [requested_thread(item, header) for item in config]
    else:
        threads = [requested_thread(config, header)] * len(inputs)
    if len(set(threads)) != len(threads):
        raise HTTPException(
            422, "a batch may run one turn per thread: send turns on the same thread in order"
        )
    return threads


async def admit_agent_turns(request: Request) -> AsyncIterator[None]:
    """Dependency of the /agent routes: auth everywhere, limits and thread locks on turns."""
    admission: Admission = request.app.state.admission
    tenant = authenticate(request)
    endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    if request.method != "POST" or endpoint not in TURN_ENDPOINTS:
        yield
        return
    validate_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
    body = await json_body(request, admission.limits)
    threads = agent_threads(endpoint, body, request, admission)
    keys = [scoped_thread_key(tenant, t, admission.naming) for t in threads]
    async with turn_held(admission, keys, streamed=endpoint in STREAM_ENDPOINTS):
        yield


def validated_overrides(configurable: Mapping[str, Any], policy: MemoryPolicy) -> None:
    """422 now, rather than a failed turn later, for overrides the graph would refuse."""
    try:
        policy.overridden(None, configurable)
    except InvalidOverrideError as exc:
        raise HTTPException(422, str(exc)) from None


def request_user(request: Request) -> str | None:
    """The end user a request names in its header, if any (validated)."""
    user = request.headers.get(USER_HEADER)
    return validate_user_id(user) if user is not None else None


def scoped_run_config(
    config: dict[str, Any], request: Request, thread_id: str, admission: Admission
) -> dict[str, Any]:
    """The run config with the tenant-scoped thread and this request's idempotency key."""
    configurable = dict(config.get("configurable") or {})
    validated_overrides(configurable, admission.policy)
    tenant = getattr(request.state, "tenant", None)
    configurable["thread_id"] = scoped_thread_key(tenant, thread_id, admission.naming)
    configurable[THREAD_ID_CONFIG_KEY] = thread_id
    user = one_of("user_id", configurable.pop("user_id", None), request_user(request), USER_HEADER)
    configurable[USER_CONFIG_KEY] = validate_user_id(user) if user is not None else None
    configurable[TENANT_CONFIG_KEY] = admission.naming.tenant_tag(tenant)
    configurable.pop(IDEMPOTENCY_CONFIG_KEY, None)
    if key := request.headers.get(IDEMPOTENCY_HEADER):
        configurable[IDEMPOTENCY_CONFIG_KEY] = key
    return {**config, "configurable": configurable}


async def agent_config(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """LangServe's per-request config modifier for /agent (called once per run config)."""
    admission: Admission = request.app.state.admission
    thread_id = requested_thread(config, request.headers.get(THREAD_HEADER))
    return scoped_run_config(config, request, thread_id, admission)
