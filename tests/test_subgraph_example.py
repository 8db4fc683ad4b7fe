"""`examples/parent_agent.py` runs offline as documented, routes, and remembers across runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "parent_agent.py"
FIRST = "Hello, my name is Ada and I collect old maps."


def run_example(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def replies(stdout: str) -> list[tuple[str, str]]:
    """(speaker, text) for every line the agent answered."""
    pairs = [line.split("> ", 1) for line in stdout.splitlines() if "> " in line]
    return [(who, text) for who, text in pairs if who != "you"]


def test_parent_agent_routes_and_keeps_the_thread_across_runs(tmp_path: Path) -> None:
    demo = run_example(tmp_path, THREADLINE_MODEL="fake")
    assert demo.returncode == 0, demo.stderr
    first, sum_, recall = replies(demo.stdout)
    assert first[0] == "threadline"
    assert sum_ == ("calculator", "12*7 = 84")
    assert recall[0] == "threadline"
    assert "What do I collect?" in recall[1]
    assert FIRST in recall[1]  # the subgraph still sees the first turn
    assert (tmp_path / ".threadline" / "threads.sqlite").is_file()  # the default backend

    again = run_example(
        tmp_path, "What was my first message?", "what is 2*(3+4)", THREADLINE_MODEL="fake"
    )
    assert again.returncode == 0, again.stderr
    (who, text), calc = replies(again.stdout)
    assert who == "threadline"
    assert "[turn 4]" in text and FIRST in text  # a new process continued the same thread
    assert calc == ("calculator", "2*(3+4) = 14")

    other = run_example(tmp_path, "--thread", "someone-else", "Hi", THREADLINE_MODEL="fake")
    assert other.returncode == 0, other.stderr
    [(who, text)] = replies(other.stdout)
    assert "[turn 1]" in text and FIRST not in text


def test_parent_agent_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    result = run_example(tmp_path, THREADLINE_MODEL="fake", THREADLINE_CHECKPOINTER="postgres")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "THREADLINE_POSTGRES_URL" in line
    invalid = run_example(tmp_path, THREADLINE_MODEL="gpt-4o")
    assert invalid.returncode == 2
    assert (
        invalid.stderr.startswith("error: THREADLINE_MODEL") and "Traceback" not in invalid.stderr
    )
