"""The throwaway services are real and behave as the storage and fault tests assume."""

from __future__ import annotations

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from threadline.dev.services import DevServices, RedisServer, ServiceError


def _module_names(url: str) -> set[str]:
    client = redis.Redis.from_url(url)
    try:
        return {m[b"name"].decode().lower() for m in client.execute_command("MODULE LIST")}
    finally:
        client.close()


def test_redis_stack_has_json_and_search(redis_url: str) -> None:
    names = _module_names(redis_url)
    assert {"rejson", "search"} <= names
    client = redis.Redis.from_url(redis_url)
    client.json().set("services:doc", "$", {"a": 1})
    assert client.json().get("services:doc", "$.a") == [1]
    client.close()


def test_plain_redis_has_no_modules(plain_redis_url: str) -> None:
    assert _module_names(plain_redis_url) == set()


def test_postgres_answers(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone() == ("threadline",)


def test_postgres_db_url_is_fresh_and_empty(postgres_url: str, postgres_db_url: str) -> None:
    assert postgres_db_url != postgres_url
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None and name[0].startswith("t_")
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('public.only_here')").fetchone() == (None,)


def test_pause_resume_restart(redis_server_factory) -> None:
    server: RedisServer = redis_server_factory()
    assert server.url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(
        server.url, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    client.set("k", "v")

    server.pause()
    with pytest.raises(redis.TimeoutError):
        client.get("k")
    server.resume()
    assert redis.Redis.from_url(server.url, socket_timeout=2).get("k") == b"v"

    old_pid = server.pid
    server.restart()
    assert server.pid != old_pid
    assert redis.Redis.from_url(server.url, socket_timeout=2).get("k") is None
    assert _module_names(server.url) == set()


def test_stopped_server_cannot_be_paused(tmp_path) -> None:
    server = RedisServer(6399, tmp_path, modules=False)
    with pytest.raises(ServiceError, match="not running"):
        server.pause()


def test_dev_services_start_status_stop(tmp_path) -> None:
    urls = DevServices.start(tmp_path)
    try:
        assert set(urls) == {
            "THREADLINE_POSTGRES_URL",
            "THREADLINE_REDIS_URL",
            "THREADLINE_PLAIN_REDIS_URL",
        }
        assert all(s.running for s in DevServices.status(tmp_path))
        assert DevServices.start(tmp_path) == urls  # idempotent while running
        assert {"rejson", "search"} <= _module_names(urls["THREADLINE_REDIS_URL"])
        with psycopg.connect(urls["THREADLINE_POSTGRES_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stopped = DevServices.stop(tmp_path)
    assert sorted(stopped) == ["postgres", "redis", "redis-stack"]
    assert DevServices.status(tmp_path) == []
