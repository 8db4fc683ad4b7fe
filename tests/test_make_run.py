"""`make run` — the README's first command — serves the agent and keeps thread memory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from threadline.dev.services import free_port

REPO = Path(__file__).resolve().parent.parent


def invoke(base: str, thread_id: str, text: str) -> str:
    response = httpx.post(
        f"{base}/agent/invoke",
        json={
            "input": {"messages": [{"type": "human", "content": text}]},
            "config": {"configurable": {"thread_id": thread_id}},
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["output"]["messages"][-1]["content"])


def test_make_run_serves_with_memory(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))}
    env["THREADLINE_SQLITE_PATH"] = str(tmp_path / "threads.sqlite")
    server = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "make run did not start serving in 60 s"
            time.sleep(0.2)

        first = invoke(base, "make-run", "My cat is called Miso.")
        second = invoke(base, "make-run", "What is my cat called?")
        other = invoke(base, "someone-else", "Hi")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    assert "[turn 1]" in first
    assert "[turn 2]" in second and "Miso" in second
    assert "[turn 1]" in other and "Miso" not in other
    assert (tmp_path / "threads.sqlite").exists()
