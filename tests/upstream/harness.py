"""Run upstream test suites in a child pytest against one saver and count the results.

One child per upstream distribution (each sdist brings its own ``tests`` package, so the two
cannot share a process), with ``threadline_upstream_plugin`` doing the saver swap. Results are
read from the child's JUnit XML, not from its exit code or output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from tests.upstream.sdist import upstream_dir

PLUGIN_DIR = Path(__file__).resolve().parent
PLUGIN = "threadline_upstream_plugin"
SAVERS = ("stock", "durable", "tiered")

# Distribution on PyPI -> short name used in suite names and test ids.
DISTS = {"langgraph": "langgraph", "langgraph-checkpoint-postgres": "checkpoint-postgres"}

# Test modules per distribution; a trailing "*" is a glob over the extracted tests/ folder.
SUITES: dict[str, tuple[str, ...]] = {
    "langgraph": (
        "test_pregel_async",
        "test_time_travel_async",
        "test_subgraph_persistence_async",
        "test_large_cases_async",
        "test_delta_channel_*",
        "test_interrupt_state",
        "test_strict_resume",
        "test_checkpoint_migration",
        "test_interruption",
    ),
    "langgraph-checkpoint-postgres": (
        "test_async",
        "test_prune",
        "test_conformance_delta",
        "test_delta_plain_value_seed",
        "test_delta_pagination",
    ),
}

# Upstream addopts we keep, per distribution (theirs also add --full-trace and --durations).
UPSTREAM_OPTIONS = {
    "langgraph": ("--strict-markers", "--snapshot-warn-unused"),
    "langgraph-checkpoint-postgres": ("--strict-markers",),
}
PER_TEST_TIMEOUT_SECONDS = 120
CHILD_TIMEOUT_SECONDS = 1200
OUTCOMES = ("passed", "failed", "skipped", "errors")


@dataclass
class SuiteCounts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped + self.errors

    def __str__(self) -> str:
        return " ".join(f"{getattr(self, o)} {o}" for o in OUTCOMES)


@dataclass
class RunResult:
    """Outcome of the selected suites for one saver."""

    saver: str
    counts: dict[str, SuiteCounts] = field(default_factory=dict)
    # Test ids (``<dist>/tests/<module>.py::<name>``) that failed or errored.
    failures: list[str] = field(default_factory=list)
    # Saver classes the plugin actually opened, per distribution: proof the swap took effect.
    opened: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> SuiteCounts:
        total = SuiteCounts()
        for counts in self.counts.values():
            for outcome in OUTCOMES:
                setattr(total, outcome, getattr(total, outcome) + getattr(counts, outcome))
        return total

    def summary_lines(self) -> list[str]:
        lines = [f"{self.saver}: {self.total} in {self.seconds:.0f} s"]
        lines += [f"  {suite:<50} {counts}" for suite, counts in sorted(self.counts.items())]
        return lines


class UpstreamRunError(RuntimeError):
    """The child pytest did not produce results (crash, usage error, nothing collected)."""


def suite_files(dist: str, root: Path, only: Iterable[str] | None = None) -> list[str]:
    """``tests/<module>.py`` paths of the selected suites, checked to exist in this sdist.

    ``only`` filters by module name or ``<short dist>/<module>`` (globs allowed).
    """
    files: list[str] = []
    for module in SUITES[dist]:
        matches = sorted(p.stem for p in (root / "tests").glob(f"{module}.py"))
        if not matches:
            raise UpstreamRunError(f"{dist} {root.name} has no tests/{module}.py")
        files += [f"tests/{m}.py" for m in matches]
    if only is not None:
        wanted = list(only)
        files = [f for f in files if _selected(DISTS[dist], Path(f).stem, wanted)]
    return files


def _selected(short: str, module: str, wanted: Sequence[str]) -> bool:
    return any(fnmatch(module, w) or fnmatch(f"{short}/{module}", w) for w in wanted)


def run_upstream(
    saver: str,
    *,
    postgres_url: str,
    plain_redis_url: str,
    only: Sequence[str] | None = None,
    keyword: str | None = None,
    extra_args: Sequence[str] = (),
) -> RunResult:
    """Run the selected upstream suites against ``saver`` (stock | durable | tiered)."""
    if saver not in SAVERS:
        raise ValueError(f"saver must be one of {SAVERS}, not {saver!r}")
    result = RunResult(saver)
    started = time.monotonic()
    for dist, short in DISTS.items():
        root = upstream_dir(dist)
        files = suite_files(dist, root, only)
        if not files:
            continue
        with tempfile.TemporaryDirectory(prefix="threadline-upstream-") as tmp:
            junit, report = Path(tmp) / "junit.xml", Path(tmp) / "report.json"
            args = [
                sys.executable, "-m", "pytest", *files,
                "-p", PLUGIN, "-p", "no:cacheprovider",
                "-o", "addopts=", *UPSTREAM_OPTIONS[dist],
                # A module that fails to import counts as an error of its suite.
                "--continue-on-collection-errors",
                "-q", "-rfE", "--tb=short", "--no-header",
                f"--timeout={PER_TEST_TIMEOUT_SECONDS}",
                f"--junitxml={junit}", "-o", "junit_family=xunit2",
                *(["-k", keyword] if keyword else []),
                *extra_args,
            ]  # fmt: skip
            env = _child_env(saver, postgres_url, plain_redis_url, report)
            try:
                done = subprocess.run(
                    args, cwd=root, env=env, capture_output=True, text=True,
                    timeout=CHILD_TIMEOUT_SECONDS, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise UpstreamRunError(
                    f"{short} suites for {saver} ran over {CHILD_TIMEOUT_SECONDS} s"
                ) from exc
            output = done.stdout + done.stderr
            # 0: all passed, 1: some failed; 5 (nothing collected) means the swap selected
            # nothing, anything else is a crash or a usage error.
            if done.returncode not in (0, 1) or not junit.is_file():
                raise UpstreamRunError(
                    f"child pytest for {short} ({saver}) exited {done.returncode}:\n{_tail(output)}"
                )
            counts, failures = parse_junit(junit, short)
            result.counts.update(counts)
            result.failures += failures
            if report.is_file():
                result.opened[short] = json.loads(report.read_text())["opened"]
    result.seconds = time.monotonic() - started
    return result


def _child_env(saver: str, postgres_url: str, plain_redis_url: str, report: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH", "")) if p
    )
    env.update(
        THREADLINE_UPSTREAM_SAVER=saver,
        THREADLINE_TEST_POSTGRES_URL=postgres_url,
        THREADLINE_TEST_PLAIN_REDIS_URL=plain_redis_url,
        THREADLINE_UPSTREAM_REPORT=str(report),
        # NO_DOCKER=true would drop the postgres_aio parametrization we swap.
        NO_DOCKER="false",
    )
    env.pop("LANGGRAPH_STRICT_MSGPACK", None)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def parse_junit(path: Path, short: str) -> tuple[dict[str, SuiteCounts], list[str]]:
    """Per-suite counts and failing test ids from a JUnit XML file.

    A test reported more than once (e.g. a failure then a teardown error) counts once, with
    its worst outcome; a module that fails to import counts as one error of its suite.
    """
    worst: dict[tuple[str, str], str] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2, "errors": 3}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        if classname:
            module = classname.split(".")[1] if "." in classname else classname
            test_id = f"{short}/tests/{module}.py::{name}"
        else:  # collection error: name is the dotted module path
            module = name.split(".")[-1]
            test_id = f"{short}/tests/{module}.py"
        outcome = "passed"
        if case.find("error") is not None:
            outcome = "errors"
        elif case.find("failure") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        key = (f"{short}/{module}", test_id)
        if key not in worst or rank[outcome] > rank[worst[key]]:
            worst[key] = outcome
    counts: dict[str, SuiteCounts] = {}
    failures: list[str] = []
    for (suite, test_id), outcome in worst.items():
        suite_counts = counts.setdefault(suite, SuiteCounts())
        setattr(suite_counts, outcome, getattr(suite_counts, outcome) + 1)
        if outcome in ("failed", "errors"):
            failures.append(test_id)
    return counts, failures


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def services() -> Iterator[tuple[str, str]]:
    """(postgres_url, plain_redis_url): from THREADLINE_TEST_POSTGRES_URL /
    THREADLINE_TEST_PLAIN_REDIS_URL when set, else throwaway servers stopped on exit."""
    from threadline.dev.services import PostgresServer, RedisServer, free_port

    started: list[PostgresServer | RedisServer] = []
    dirs: list[str] = []
    try:
        pg_url = os.environ.get("THREADLINE_TEST_POSTGRES_URL")
        if not pg_url:
            dirs.append(tempfile.mkdtemp(prefix="threadline-upstream-pg-"))
            pg = PostgresServer(free_port(), Path(dirs[-1]))
            started.append(pg)
            pg.start()
            pg_url = pg.url
        redis_url = os.environ.get("THREADLINE_TEST_PLAIN_REDIS_URL")
        if not redis_url:
            dirs.append(tempfile.mkdtemp(prefix="threadline-upstream-redis-"))
            redis = RedisServer(free_port(), Path(dirs[-1]), modules=False)
            started.append(redis)
            redis.start()
            redis_url = redis.url
        yield pg_url, redis_url
    finally:
        for server in reversed(started):
            server.stop()
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
