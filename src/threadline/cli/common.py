"""What every `threadline` command shares: consoles, errors (exit 2 for usage), settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

from threadline.settings import Settings, SettingsError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

USAGE_ERROR = 2


def say(text: str) -> None:
    """Print user or model text verbatim (no rich markup: `[turn 1]` is not a style)."""
    out.print(text, markup=False, highlight=False)


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False)
    return typer.Exit(code)


def load_settings(*, model: bool = True) -> Settings:
    """Settings from the environment, checked; a bad one ends the command with one line.

    Commands that only read stored threads pass `model=False`: they run the offline model."""
    try:
        settings = Settings.from_env().check(model=model)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    return settings if model else settings.model_copy(update={"model": "fake"})


def checked_thread_id(thread_id: str) -> str:
    from threadline.server.threads import THREAD_ID_PATTERN

    if not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise fail("THREAD_ID must be 1-128 characters of letters, digits and . _ : @ -")
    return thread_id


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())
