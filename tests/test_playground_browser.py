"""The chat playground in a real browser (Chromium via Playwright): a conversation that
streams, remembers, survives a reload, and says what to do when something fails.

The model is the real `ChatOpenAI` against the OpenAI stub, so "remembered" is checked in what
the model was sent. Screenshots of each step land in test-artifacts/playground/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.browser import ARTIFACTS
from tests.fixtures.openai_stub import OpenAIStub
from tests.fixtures.server import live_server, settings_for

REPLIES = ".message.ai:not(.pending)"
LOADED = "document.querySelector('#thread').textContent.includes('messages')"  # history shown


async def send(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def test_a_conversation_in_the_playground(
    browser_page: Any,
    openai_stub: OpenAIStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in openai_stub.env().items():
        monkeypatch.setenv(name, value)
    settings = settings_for(
        model="openai:gpt-4o-mini",
        checkpointer="sqlite",
        sqlite_path=tmp_path / "threads.sqlite",
        max_message_chars=500,
    )
    shots = ARTIFACTS / "playground"
    shots.mkdir(parents=True, exist_ok=True)
    page = browser_page
    with live_server(settings) as base:
        await page.goto(f"{base}/chat/playground/")
        await page.wait_for_function(LOADED)

        await send(page, "My name is Ada and I keep bees")
        await page.wait_for_selector(REPLIES)
        assert await page.locator(REPLIES).last.inner_text() == (
            "echo: My name is Ada and I keep bees"
        )
        await page.screenshot(path=shots / "1-first-turn.png")

        await send(page, "What do I keep?")
        await page.wait_for_function(f"document.querySelectorAll('{REPLIES}').length == 2")
        assert await page.locator(REPLIES).last.inner_text() == "echo: What do I keep?"
        assert openai_stub.last_request.texts("user") == [
            "My name is Ada and I keep bees",
            "What do I keep?",
        ]
        assert openai_stub.last_request.body.get("stream") is True  # the reply streamed
        await page.screenshot(path=shots / "2-second-turn.png")

        await page.reload()
        await page.wait_for_function("document.querySelectorAll('.message').length == 4")
        shown = await page.locator(".message").all_inner_texts()
        assert shown == [
            "My name is Ada and I keep bees",
            "echo: My name is Ada and I keep bees",
            "What do I keep?",
            "echo: What do I keep?",
        ]
        await page.screenshot(path=shots / "3-after-reload.png")

        await send(page, "x" * 600)  # over THREADLINE_MAX_MESSAGE_CHARS
        await page.wait_for_selector("#problem:not([hidden])")
        problem = await page.inner_text("#problem")
        assert "413" in problem and "shorten it" in problem
        assert await page.input_value("#text") == "x" * 600  # given back, nothing stored
        await page.screenshot(path=shots / "4-too-long.png")

        with openai_stub.fail_when(lambda request: True, status=500):
            await page.fill("#text", "")
            await send(page, "are you there?")
            await page.wait_for_function(
                "document.querySelector('#problem').textContent.includes('reply failed')"
            )
        problem = await page.inner_text("#problem")
        assert "502" in problem and "model call failed" in problem and "send again" in problem
        assert await page.input_value("#text") == "are you there?"
        await page.screenshot(path=shots / "5-model-failed.png")

        await page.reload()  # the failed turn left nothing behind
        await page.wait_for_function(LOADED)
        assert len(await page.locator(".message").all_inner_texts()) == 4
