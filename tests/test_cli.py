"""The `threadline` command as a user runs it: a subprocess, stdin in, stdout/stderr out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THREADLINE = str(Path(sys.executable).parent / "threadline")


def run_cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))}
    return subprocess.run(
        [THREADLINE, *args],
        input=stdin,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def offline_sqlite(tmp_path: Path) -> dict[str, str]:
    return {
        "THREADLINE_MODEL": "fake",
        "THREADLINE_CHECKPOINTER": "sqlite",
        "THREADLINE_SQLITE_PATH": str(tmp_path / "threads.sqlite"),
    }


def test_chat_continues_the_thread_across_runs(offline_sqlite: dict[str, str]) -> None:
    first = run_cli("chat", "kitchen", env=offline_sqlite, stdin="I like figs\nand plums\n")
    assert first.returncode == 0, first.stderr
    assert "[turn 1] You said 'I like figs'" in first.stdout
    assert "[turn 2] You said 'and plums'" in first.stdout

    second = run_cli("chat", "kitchen", env=offline_sqlite, stdin="what about pears?\n")
    assert second.returncode == 0, second.stderr
    assert "4 messages so far" in second.stdout
    assert "[turn 3] You said 'what about pears?'. Your first message: 'I like figs'" in (
        second.stdout
    )

    other = run_cli("chat", "garden", env=offline_sqlite, stdin="hello\n")
    assert "[turn 1] You said 'hello'. Your first message: 'hello'" in other.stdout


def test_threads_show_prints_the_transcript(offline_sqlite: dict[str, str]) -> None:
    run_cli("chat", "notes", env=offline_sqlite, stdin="remember the blue door\n")
    no_model = {**offline_sqlite, "THREADLINE_MODEL": "openai:gpt-4o-mini"}  # and no API key
    shown = run_cli("threads", "show", "notes", env=no_model)
    assert shown.returncode == 0, shown.stderr
    assert "remember the blue door" in shown.stdout
    assert "[turn 1]" in shown.stdout
    assert "summary" in shown.stdout

    listed = run_cli("threads", "list", env={**no_model, "COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    assert "notes" in listed.stdout and "remember the blue door" in listed.stdout

    exported = run_cli("threads", "export", "notes", "--format", "markdown", env=no_model)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("# remember the blue door")
    assert "**ai**: [turn 1]" in exported.stdout
    bad_format = run_cli("threads", "export", "notes", "--format", "pdf", env=no_model)
    assert bad_format.returncode == 2 and "jsonl or markdown" in bad_format.stderr

    missing = run_cli("threads", "show", "nobody-here", env=offline_sqlite)
    assert missing.returncode == 1
    assert "no thread 'nobody-here'" in missing.stderr


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"THREADLINE_CHECKPOINTER": "sqlite"}, ["chat", "t1"], "needs OPENAI_API_KEY"),
        (
            {"THREADLINE_MODEL": "fake", "THREADLINE_CHECKPOINTER": "postgres"},
            ["chat", "t1"],
            "needs THREADLINE_POSTGRES_URL",
        ),
        (
            {"THREADLINE_MODEL": "fake", "THREADLINE_CHECKPOINTER": "mongo"},
            ["chat", "t1"],
            "THREADLINE_CHECKPOINTER",
        ),
        (
            {"THREADLINE_MODEL": "fake", "THREADLINE_MAX_CONTEXT_TOKENS": "lots"},
            ["serve"],
            "THREADLINE_MAX_CONTEXT_TOKENS",
        ),
        ({"THREADLINE_MODEL": "fake"}, ["chat", "bad id!"], "THREAD_ID must be"),
        (
            {"THREADLINE_MODEL": "fake", "THREADLINE_AES_KEY": "too-short"},
            ["serve"],
            "THREADLINE_AES_KEY must be 16, 24 or 32 bytes",
        ),
    ],
)
def test_unusable_input_stops_with_one_line_and_exit_2(
    env: dict[str, str], args: list[str], message: str, tmp_path: Path
) -> None:
    env = {"THREADLINE_SQLITE_PATH": str(tmp_path / "x.sqlite"), **env}
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
