"""The chat playground at /chat: a person in a browser talking to one server-side thread.

The page (`playground/`, served at /chat/playground/) shows the visitor's history from
/chat/history and streams each reply from LangServe's /chat/stream. The thread comes from a
cookie this server sets per visitor (scoped by tenant when auth is on, via HTTP Basic so the
browser can log in); a client that re-sends the whole conversation is fine too: only the
trailing human message reaches the checkpointed graph, and the reply streams back as text.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.server.admission import (
    STREAM_ENDPOINTS,
    TURN_ENDPOINTS,
    Admission,
    scoped_run_config,
    turn_held,
)
from threadline.server.auth import authenticate
from threadline.server.limits import check_turn_input, json_body
from threadline.server.threads import THREAD_ID_PATTERN, scoped_thread_key
from threadline.server.turns import TurnRunner

CHAT_PATH = "/chat"
CHAT_COOKIE = "threadline_chat"
CHAT_THREAD_SCOPE_KEY = "threadline.chat_thread"
COOKIE_MAX_AGE = 365 * 24 * 3600


class ChatInput(BaseModel):
    """The conversation as the page shows it; only its last (human) message is new."""

    messages: list[HumanMessage | AIMessage | SystemMessage] = Field(
        ..., json_schema_extra={"widget": {"type": "chat", "input": "messages"}}
    )


def _cookie_thread(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name != b"cookie":
            continue
        try:
            jar = SimpleCookie(value.decode("latin-1"))
        except CookieError:
            return None
        if (morsel := jar.get(CHAT_COOKIE)) and THREAD_ID_PATTERN.fullmatch(morsel.value):
            return morsel.value
    return None


class ChatThreadCookie:
    """ASGI middleware: every /chat visitor gets a thread of their own, kept in a cookie."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(f"{CHAT_PATH}/"):
            await self.app(scope, receive, send)
            return
        thread = _cookie_thread(scope)
        if thread is not None:
            scope[CHAT_THREAD_SCOPE_KEY] = thread
            await self.app(scope, receive, send)
            return
        thread = f"chat-{secrets.token_urlsafe(12)}"
        scope[CHAT_THREAD_SCOPE_KEY] = thread
        cookie = (
            f"{CHAT_COOKIE}={thread}; Path={CHAT_PATH}; Max-Age={COOKIE_MAX_AGE}; "
            "HttpOnly; SameSite=Lax"
        )

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _is_human(message: Any) -> bool:
    return isinstance(message, dict) and message.get("type") in ("human", "user")


def chat_thread(request: Request) -> str:
    thread = request.scope.get(CHAT_THREAD_SCOPE_KEY)
    if thread is None:  # only without the middleware, i.e. a wiring mistake
        raise HTTPException(500, "chat thread cookie middleware is not installed")
    return str(thread)


async def admit_chat_turn(request: Request) -> AsyncIterator[None]:
    """Dependency of the /chat routes: Basic or Bearer auth, limits, the visitor's thread lock."""
    admission: Admission = request.app.state.admission
    tenant = authenticate(request, browser=True)
    endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    if request.method != "POST" or endpoint not in TURN_ENDPOINTS:
        yield
        return
    body = await json_body(request, admission.limits)
    input = body.get("input") if isinstance(body, dict) else None
    check_turn_input(input, admission.limits)
    messages = input.get("messages") if isinstance(input, dict) else None
    if not isinstance(messages, list) or not messages or not _is_human(messages[-1]):
        raise HTTPException(422, "input.messages must end with the new human message")
    keys = [scoped_thread_key(tenant, chat_thread(request), admission.naming)]
    async with turn_held(admission, keys, streamed=endpoint in STREAM_ENDPOINTS):
        yield


async def chat_config(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """LangServe's per-request config modifier for /chat: the visitor's thread, always."""
    admission: Admission = request.app.state.admission
    return scoped_run_config(config, request, chat_thread(request), admission)


def new_human_message(input: dict[str, Any]) -> HumanMessage:
    messages = input.get("messages") or []
    if not messages or not isinstance(messages[-1], HumanMessage):
        raise HTTPException(422, "the conversation must end with the new human message")
    last = messages[-1]
    return HumanMessage(content=last.content, id=last.id) if last.id else HumanMessage(last.content)


def reply_text(message: Any) -> str:
    if isinstance(message, AIMessage | AIMessageChunk):
        return message.text if isinstance(message.content, list) else str(message.content)
    return ""


class ChatAgent:
    """The chat-shaped runnable: the new message in, the reply's text streamed out."""

    def __init__(self, runner: Callable[[], TurnRunner]) -> None:
        self._runner = runner  # the running lifespan's turn runner

    def runnable(self) -> Runnable[Any, str]:
        turn: Runnable[Any, Any] = RunnableLambda(self._turn, name="threadline-chat")
        return turn.with_types(input_type=ChatInput, output_type=str)

    async def _turn(self, input: dict[str, Any], config: RunnableConfig) -> AsyncIterator[str]:
        runner = self._runner()
        turn = {"messages": [new_human_message(input)]}
        if (previous := await runner.previous(turn, config)) is not None:
            yield reply_text(previous["messages"][-1])
            return
        async for message, metadata in runner.stream(turn, config, stream_mode="messages"):
            if metadata.get("langgraph_node") == "model" and (text := reply_text(message)):
                yield text


PLAYGROUND_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "playground.css": ("playground.css", "text/css; charset=utf-8"),
}


class ChatMessageOut(BaseModel):
    type: str
    content: str


class ChatHistoryOut(BaseModel):
    thread_id: str
    messages: list[ChatMessageOut]


def playground_router(runner: Callable[[], TurnRunner]) -> APIRouter:
    """The page at /chat/playground/ and the visitor's history it shows on load."""
    router = APIRouter(prefix=CHAT_PATH, tags=["chat"])

    @router.get("/playground", include_in_schema=False)
    async def playground_root() -> RedirectResponse:
        return RedirectResponse(f"{CHAT_PATH}/playground/")

    @router.get("/playground/{name:path}", include_in_schema=False)
    async def playground_file(name: str, request: Request) -> Response:
        authenticate(request, browser=True)
        if name not in PLAYGROUND_FILES:
            raise HTTPException(404, f"no playground file {name!r}")
        file, media_type = PLAYGROUND_FILES[name]
        body = resources.files(__package__).joinpath(f"playground/{file}").read_bytes()
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @router.get("/history", response_model=ChatHistoryOut)
    async def chat_history(request: Request) -> ChatHistoryOut:
        """The visitor's conversation (the thread under their cookie), oldest first."""
        tenant = authenticate(request, browser=True)
        thread = chat_thread(request)
        key = scoped_thread_key(tenant, thread, runner().naming)
        config: RunnableConfig = {"configurable": {"thread_id": key}}
        state = await runner().graph.aget_state(config)
        shown = [
            ChatMessageOut(type=m.type, content=m.text)
            for m in state.values.get("messages", [])
            if m.type in ("human", "ai") and m.text
        ]
        return ChatHistoryOut(thread_id=thread, messages=shown)

    return router
