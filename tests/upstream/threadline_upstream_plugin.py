"""Pytest plugin loaded into the *upstream* test run (``-p threadline_upstream_plugin``).

It swaps the async checkpointer the upstream suites build for the saver under test and
deselects every other parametrization; test bodies are untouched. It is a top-level module
(put on ``PYTHONPATH`` by the harness), not part of our ``tests`` package, because the upstream
suites bring their own package called ``tests``.

Configuration comes from the environment, set by ``tests/upstream/harness.py``:

- ``THREADLINE_UPSTREAM_SAVER``: ``stock`` (AsyncPostgresSaver, for comparison), ``durable``
  (DurablePostgresSaver) or ``tiered`` (TieredSaver);
- ``THREADLINE_TEST_POSTGRES_URL``: any database on a server where we may create databases;
- ``THREADLINE_TEST_PLAIN_REDIS_URL``: a module-free Redis (tiered only).

Swap points, per upstream distribution:

- langgraph: ``tests.conftest.async_checkpointer`` calls ``_checkpointer_postgres_aio()``
  for its ``postgres_aio`` parameter; that name is replaced by a fresh-database factory of the
  saver under test, and only ``[...postgres_aio...]`` items that use ``async_checkpointer``
  are kept (the other params are memory/sqlite or the same stock saver in another connection
  mode; tests without ``async_checkpointer`` never touch our saver).
- langgraph-checkpoint-postgres: there are no fixtures, the modules open savers through
  ``tests.test_async._saver(name)`` (re-imported by test_prune as ``_async_saver``) and
  ``AsyncPostgresSaver.from_conn_string(DEFAULT_URI)``. Those module globals are replaced,
  ``DEFAULT_POSTGRES_URI``/``DEFAULT_URI`` in ``tests.conftest`` point at our server, and one
  async connection mode is kept (``saver_name=base``, ``name=aio_base``); sync tests go.

Our savers are async-first (their sync methods raise on the event loop), so sync-only
parametrizations (``sync_checkpointer``, PostgresSaver, prune's ``base/pool/pipe``) are out.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from threadline.checkpointers.durable import DurablePostgresSaver
from threadline.checkpointers.tiered import TieredSaver

SAVER_ENV = "THREADLINE_UPSTREAM_SAVER"
POSTGRES_ENV = "THREADLINE_TEST_POSTGRES_URL"
PLAIN_REDIS_ENV = "THREADLINE_TEST_PLAIN_REDIS_URL"
# Where to write {"dist": ..., "opened": {class name: count}} at the end of the run.
REPORT_ENV = "THREADLINE_UPSTREAM_REPORT"
SAVERS = ("stock", "durable", "tiered")
T = TypeVar("T")

# langgraph: the async_checkpointer param whose factory we replace (all others are deselected).
LANGGRAPH_PARAM = "postgres_aio"
# langgraph: what NO_DOCKER=true would leave of the other service-backed fixtures. NO_DOCKER
# itself cannot be used, it also drops the postgres_aio param; these need docker's fixed ports.
LANGGRAPH_NO_DOCKER = {"cache": {"sqlite", "memory"}, "async_store": {"in_memory"}}
# checkpoint-postgres: the one async connection mode kept per parametrized test.
KEPT_PARAMS = {"saver_name": "base", "name": "aio_base"}


def saver_kind() -> str:
    kind = os.environ.get(SAVER_ENV, "")
    if kind not in SAVERS:
        raise pytest.UsageError(f"{SAVER_ENV} must be one of {SAVERS}, not {kind!r}")
    return kind


def _with_database(url: str, database: str, query: str = "") -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=query))


def server_root_url() -> str:
    """``scheme://user@host:port/``: upstream appends database names to it."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        raise pytest.UsageError(f"{POSTGRES_ENV} is not set")
    return _with_database(url, "")


class _State:
    """Per-run state: which upstream suite is loaded, the shared database, the key prefix."""

    dist: str | None = None
    shared_db: str | None = None
    key_prefix: str = "upstream"
    # Class names of the savers actually opened: proof the swap took effect.
    opened: Counter[str] = Counter()
    # id(saver) -> its database URL, for test_prune's second saver on the same database.
    db_urls: dict[int, str] = {}


STATE = _State()


@asynccontextmanager
async def open_saver(db_url: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The saver under test on an existing database, set up and closed on exit."""
    async with _open_saver(db_url) as saver:
        STATE.opened[type(saver).__name__] += 1
        STATE.db_urls[id(saver)] = db_url
        try:
            yield saver
        finally:
            del STATE.db_urls[id(saver)]


@asynccontextmanager
async def _open_saver(db_url: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    kind = saver_kind()
    if kind == "stock":
        async with AsyncPostgresSaver.from_conn_string(db_url) as stock:
            await stock.setup()
            yield stock
    elif kind == "durable":
        async with DurablePostgresSaver.from_conn_string(db_url) as durable:
            yield durable
    else:
        redis_url = os.environ.get(PLAIN_REDIS_ENV)
        if not redis_url:
            raise pytest.UsageError(f"{PLAIN_REDIS_ENV} is not set (needed by the tiered saver)")
        async with TieredSaver.from_conn_string(
            db_url, redis_url, key_prefix=STATE.key_prefix
        ) as tiered:
            yield tiered


@asynccontextmanager
async def open_fresh_saver(*_args: Any) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The saver under test on a database of its own, dropped afterwards (as upstream does)."""
    root = server_root_url()
    database = f"upstream_{uuid.uuid4().hex[:16]}"
    async with await psycopg.AsyncConnection.connect(root + "postgres", autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{database}"')
    try:
        async with open_saver(root + database) as saver:
            yield saver
    finally:
        async with await psycopg.AsyncConnection.connect(
            root + "postgres", autocommit=True
        ) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class _SaverUnderTestMeta(type):
    """``isinstance(x, AsyncPostgresSaver)`` in upstream helpers picks the async code path."""

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, (AsyncPostgresSaver, TieredSaver))


class SaverUnderTest(metaclass=_SaverUnderTestMeta):
    """Stands in for the name ``AsyncPostgresSaver`` inside checkpoint-postgres test modules."""

    @classmethod
    def from_conn_string(
        cls, conn_string: str, **_kwargs: Any
    ) -> AbstractAsyncContextManager[BaseCheckpointSaver[Any]]:
        return open_saver(conn_string)


@asynccontextmanager
async def open_second_saver(saver: Any) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """Replaces test_prune's ``_second_saver``: another saver on the first one's database
    (upstream finds it through ``saver.conn.info``, which only a single connection has)."""
    async with open_saver(STATE.db_urls[id(saver)]) as other:
        yield other


def postgres_tier(saver: Any) -> Any:
    """The AsyncPostgresSaver underneath: test_prune's helpers read tables and hook SQL
    through its private ``_cursor``, which TieredSaver keeps in ``.durable``."""
    return saver.durable if isinstance(saver, TieredSaver) else saver


def on_postgres_tier(helper: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(helper)
    def call(saver: Any, *args: Any, **kwargs: Any) -> T:
        return helper(postgres_tier(saver), *args, **kwargs)

    return call


def patch_checkpoint_postgres_modules(modules: dict[str, ModuleType]) -> None:
    """Point the saver factories of the checkpoint-postgres test modules at the saver under
    test; test functions stay as they are."""
    for name in (
        "tests.test_async",
        "tests.test_prune",
        "tests.test_conformance_delta",
        "tests.test_delta_plain_value_seed",
        "tests.test_delta_pagination",
    ):
        if name in modules:
            modules[name].AsyncPostgresSaver = SaverUnderTest  # type: ignore[attr-defined]
    if test_async := modules.get("tests.test_async"):
        test_async._saver = open_fresh_saver  # type: ignore[attr-defined]
    if test_prune := modules.get("tests.test_prune"):
        test_prune._async_saver = open_fresh_saver  # type: ignore[attr-defined]
        test_prune._second_saver = open_second_saver  # type: ignore[attr-defined]
        test_prune._rows = on_postgres_tier(test_prune._rows)  # type: ignore[attr-defined]
        test_prune._run_once_after = on_postgres_tier(test_prune._run_once_after)  # type: ignore[attr-defined]


def _create_shared_database() -> str:
    """The database upstream's ``DEFAULT_URI`` names (checkpoint-postgres clears it per test)."""
    database = f"upstream_shared_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_root_url() + "postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    STATE.shared_db = database
    return database


@pytest.hookimpl(tryfirst=True)
def pytest_plugin_registered(plugin: Any) -> None:
    """Patch the upstream ``tests.conftest`` as soon as it is imported, before test modules
    copy its constants with ``from tests.conftest import ...``."""
    if getattr(plugin, "__name__", None) != "tests.conftest":
        return
    if hasattr(plugin, "_checkpointer_postgres_aio"):
        STATE.dist = "langgraph"
        plugin._checkpointer_postgres_aio = open_fresh_saver
    elif hasattr(plugin, "DEFAULT_URI"):
        STATE.dist = "checkpoint-postgres"
        database = _create_shared_database()
        plugin.DEFAULT_POSTGRES_URI = server_root_url()
        plugin.DEFAULT_URI = _with_database(server_root_url(), database, "sslmode=disable")


def _keep(item: pytest.Item) -> bool:
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    if STATE.dist == "langgraph":
        return params.get("async_checkpointer") == LANGGRAPH_PARAM and all(
            params[name] in allowed
            for name, allowed in LANGGRAPH_NO_DOCKER.items()
            if name in params
        )
    if not inspect.iscoroutinefunction(getattr(item, "obj", None)):
        return False
    return all(params.get(name, kept) == kept for name, kept in KEPT_PARAMS.items())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the saver-under-test parametrizations; patch checkpoint-postgres module globals."""
    if STATE.dist is None:
        raise pytest.UsageError("threadline_upstream_plugin: no upstream tests/conftest.py loaded")
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (kept if _keep(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
    if STATE.dist == "checkpoint-postgres":
        modules = {getattr(item, "module", None) for item in kept} - {None}
        patch_checkpoint_postgres_modules({m.__name__: m for m in modules if m is not None})


@pytest.fixture(autouse=True)
def _fresh_key_prefix() -> Iterator[None]:
    """A Redis key prefix per test: the shared checkpoint-postgres database is emptied between
    tests, so the hot tier must not carry entries over."""
    STATE.key_prefix = f"upstream:{uuid.uuid4().hex[:12]}"
    yield


def pytest_report_header() -> list[str]:
    return [f"threadline upstream plugin: saver={os.environ.get(SAVER_ENV)}"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    opened = ", ".join(f"{name} x{count}" for name, count in sorted(STATE.opened.items()))
    terminalreporter.write_line(f"threadline upstream plugin: savers opened: {opened or 'none'}")


def pytest_unconfigure() -> None:
    if path := os.environ.get(REPORT_ENV):
        with open(path, "w") as report:
            json.dump({"dist": STATE.dist, "opened": dict(STATE.opened)}, report)
    if STATE.shared_db is None:
        return
    with psycopg.connect(server_root_url() + "postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{STATE.shared_db}" WITH (FORCE)')
    STATE.shared_db = None
