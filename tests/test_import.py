"""`threadline import`: histories written by LangChain's own message-history classes on real
servers, imported into the sqlite backend, read back through the CLI, and continued by the agent
(the real `ChatOpenAI` client against the OpenAI stub)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)

from tests.fixtures.openai_stub import OpenAIStub

THREADLINE = str(Path(sys.executable).parent / "threadline")


def run_cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))}
    return subprocess.run(
        [THREADLINE, *args],
        input=stdin,
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def imported(*args: str, env: dict[str, str]) -> str:
    done = run_cli("import", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def thread(thread_id: str, env: dict[str, str], *extra: str) -> tuple[dict[str, Any], list[Any]]:
    """The stored thread's record and transcript, as `threads export` gives them."""
    done = run_cli("threads", "export", thread_id, "--format", "jsonl", *extra, env=env)
    assert done.returncode == 0, done.stderr
    first, *lines = done.stdout.splitlines()
    return json.loads(first)["record"], messages_from_dict([json.loads(line) for line in lines])


def assert_same(stored: Sequence[BaseMessage], source: Sequence[BaseMessage]) -> None:
    """Every message, in order: type and content, and the source's id where it has one (one
    made up, distinct, where it has not: re-runs prove it stable by adding nothing)."""
    assert [(m.type, m.content) for m in stored] == [(m.type, m.content) for m in source]
    for kept, original in zip(stored, source, strict=True):
        assert kept.id == original.id if original.id else uuid.UUID(str(kept.id))
    assert len({m.id for m in stored}) == len(stored)


@pytest.fixture
def store(tmp_path: Path) -> dict[str, str]:
    """The deployment importing: sqlite, no model needed."""
    return {
        "THREADLINE_MODEL": "fake",
        "THREADLINE_CHECKPOINTER": "sqlite",
        "THREADLINE_SQLITE_PATH": str(tmp_path / "threads.sqlite"),
    }


def conversation(n: int, *, tools: bool = True) -> list[BaseMessage]:
    """A session's messages: some with ids of their own, some without (the usual case)."""
    messages: list[BaseMessage] = [
        SystemMessage(f"you help with garden {n}"),
        HumanMessage(f"my figs in garden {n} have yellow leaves", id=f"h-{n}-1"),
        AIMessage(f"water garden {n} less often"),
    ]
    if tools:
        messages += [
            AIMessage("", tool_calls=[{"name": "weather", "args": {"g": n}, "id": f"call-{n}"}]),
            ToolMessage(f"rain in garden {n}", tool_call_id=f"call-{n}"),
            AIMessage(f"it will rain on garden {n}"),
        ]
    messages.append(HumanMessage(f"thanks for garden {n}"))
    messages.append(AIMessage(f"you are welcome, gardener {n}"))
    return messages


def continue_thread(thread_id: str, store: dict[str, str], stub: OpenAIStub) -> list[str]:
    """One turn by the agent on the real OpenAI client; the texts the model was shown."""
    env = {**store, **stub.env(), "THREADLINE_MODEL": "openai:gpt-4o-mini"}
    done = run_cli("chat", thread_id, env=env, stdin="what did I ask you first?\n")
    assert done.returncode == 0, done.stderr
    return stub.last_request.texts()


# --------------------------------------------------------------------------- postgres-history


def postgres_history(url: str, session_id: str, table: str = "chat_history") -> Any:
    import psycopg
    from langchain_postgres import PostgresChatMessageHistory

    conn = psycopg.connect(url)
    PostgresChatMessageHistory.create_tables(conn, table)
    return PostgresChatMessageHistory(table, session_id, sync_connection=conn)


def test_postgres_history_imports_every_session_whole_once(
    postgres_db_url: str, store: dict[str, str], openai_stub: OpenAIStub
) -> None:
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    histories = {s: postgres_history(postgres_db_url, s) for s in sessions}
    for n, history in enumerate(histories.values()):
        history.add_messages(conversation(n))
    source = {s: h.get_messages() for s, h in histories.items()}

    dry = imported("postgres-history", "--url", postgres_db_url, "--dry-run", env=store)
    assert "would import 24" in dry and "3 new threads" in dry
    assert run_cli("threads", "show", sessions[0], env=store).returncode == 1  # nothing written

    first = imported("postgres-history", "--url", postgres_db_url, env=store)
    assert "3 read, 3 new threads" in first and "imported 24, 0 already present" in first
    for n, session in enumerate(sessions):
        record, stored = thread(session, store)
        expected = source[session]
        assert expected[1].id == f"h-{n}-1" and expected[2].id is None  # as the library keeps them
        assert_same(stored, expected)
        assert stored[3].tool_calls[0]["id"] == f"call-{n}"
        assert record["title"] == f"my figs in garden {n} have yellow leaves"
        assert record["message_count"] == 8

    again = imported("postgres-history", "--url", postgres_db_url, env=store)
    assert "0 new threads, 0 extended, 3 already complete" in again
    assert "imported 0, 24 already present" in again
    _, stored_again = thread(sessions[0], store)
    assert [m.id for m in stored_again] == [m.id for m in thread(sessions[0], store)[1]]

    histories[sessions[1]].add_messages([HumanMessage("one more about figs"), AIMessage("sure")])
    extended = imported("postgres-history", "--url", postgres_db_url, env=store)
    assert "0 new threads, 1 extended, 2 already complete" in extended
    assert "imported 2, 24 already present" in extended
    record, stored = thread(sessions[1], store)
    assert [m.content for m in stored[-2:]] == ["one more about figs", "sure"]
    assert len(stored) == 10 and record["message_count"] == 10
    ids = [m.id for m in stored]
    assert len(set(ids)) == len(ids)

    seen = continue_thread(sessions[1], store, openai_stub)
    assert seen[1 : len(stored) + 1] == [str(m.content) for m in stored]
    assert seen[-1] == "what did I ask you first?"
    _, after = thread(sessions[1], store)
    assert len(after) == 12 and [m.id for m in after[:10]] == ids


def test_postgres_history_record_times_come_from_the_rows(
    postgres_db_url: str, store: dict[str, str]
) -> None:
    import psycopg

    session = str(uuid.uuid4())
    postgres_history(postgres_db_url, session, "old_chats").add_messages(conversation(7))
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE old_chats SET created_at = "
            "timestamptz '2024-03-01 10:00:00+00' + id * interval '1 minute'"
        )
        first_id, last_id = conn.execute("SELECT min(id), max(id) FROM old_chats").fetchone()
    imported("postgres-history", "--url", postgres_db_url, "--table", "old_chats", env=store)
    record, _ = thread(session, store)
    assert record["created_at"] == pytest.approx(1709287200 + 60 * first_id)
    assert record["updated_at"] == pytest.approx(1709287200 + 60 * last_id)


def test_tenant_and_encryption_scope_the_imported_threads(
    postgres_db_url: str, store: dict[str, str]
) -> None:
    session = str(uuid.uuid4())
    postgres_history(postgres_db_url, session).add_messages(conversation(3, tools=False))
    sealed = {**store, "THREADLINE_AES_KEY": "k" * 32, "THREADLINE_PII_STRATEGY": "redact"}
    out = imported("postgres-history", "--url", postgres_db_url, "--tenant", "acme", env=sealed)
    assert "1 new threads" in out
    assert run_cli("threads", "show", session, env=sealed).returncode == 1  # not single-tenant
    record, stored = thread(session, sealed, "--tenant", "acme")
    assert record["thread_id"] == session and len(stored) == 5
    raw = Path(store["THREADLINE_SQLITE_PATH"]).read_bytes()
    for wal in Path(store["THREADLINE_SQLITE_PATH"]).parent.glob("*-wal"):
        raw += wal.read_bytes()
    assert session.encode() not in raw and b"garden 3" not in raw and b"acme" not in raw
    with sqlite3.connect(store["THREADLINE_SQLITE_PATH"]) as db:
        keys = {row[0] for row in db.execute("SELECT thread_id FROM checkpoints")}
    assert keys and all(key.startswith("h.") for key in keys)
    again = imported("postgres-history", "--url", postgres_db_url, "--tenant", "acme", env=sealed)
    assert "1 already complete" in again


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["mongo-history", "--url", "x"], 2, "unknown source 'mongo-history'"),
        (["postgres-history", "--url", "postgresql://127.0.0.1:1/x"], 1, "cannot reach"),
        (["postgres-history", "--url", "{db}", "--table", "nope"], 2, "no table 'nope'"),
        (["postgres-history", "--url", "{db}", "--table", "a;b"], 2, "--table 'a;b'"),
        (["postgres-history", "--url", "{db}", "--collection", "c"], 2, "does not apply"),
        (["dynamodb-history", "--url", "http://127.0.0.1:1"], 2, "needs --table"),
    ],
)
def test_bad_input_says_what_and_exits_without_a_traceback(
    postgres_db_url: str, store: dict[str, str], args: list[str], code: int, message: str
) -> None:
    done = run_cli("import", *(a.replace("{db}", postgres_db_url) for a in args), env=store)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- redis-history


def community_redis_history(url: str, session_id: str, prefix: str) -> Any:
    from langchain_community.chat_message_histories import RedisChatMessageHistory

    return RedisChatMessageHistory(session_id, url=url, key_prefix=prefix)


def langchain_redis_history(url: str, session_id: str, prefix: str) -> Any:
    """One index per session: langchain-redis 0.2.6 fails on an index that exists already
    (it parses FT.INFO as a list; redis-py 8 answers a dict)."""
    from langchain_redis import RedisChatMessageHistory

    return RedisChatMessageHistory(
        session_id, redis_url=url, key_prefix=prefix, index_name=f"idx:{prefix}{session_id}"
    )


def test_redis_history_of_langchain_community_lists(
    plain_redis_url: str, store: dict[str, str], openai_stub: OpenAIStub
) -> None:
    prefix = f"ms-{uuid.uuid4().hex[:8]}:"
    sessions = ["alice:1", "bob.2", "carol@3"]
    histories = {s: community_redis_history(plain_redis_url, s, prefix) for s in sessions}
    for n, history in enumerate(histories.values()):
        history.add_messages(conversation(n))
    source = {s: h.messages for s, h in histories.items()}
    args = ("redis-history", "--url", plain_redis_url, "--key-prefix", prefix)

    first = imported(*args, env=store)
    assert "3 read, 3 new threads" in first and "imported 24, 0 already present" in first
    for n, session in enumerate(sessions):
        record, stored = thread(session, store)
        assert_same(stored, source[session])
        assert stored[1].id == f"h-{n}-1"
        assert record["title"] == f"my figs in garden {n} have yellow leaves"

    assert "imported 0, 24 already present" in imported(*args, env=store)
    histories["bob.2"].add_messages([HumanMessage("and the plums?"), AIMessage("prune them")])
    extended = imported(*args, env=store)
    assert "1 extended, 2 already complete" in extended and "imported 2," in extended
    _, stored = thread("bob.2", store)
    assert_same(stored, histories["bob.2"].messages)

    seen = continue_thread("bob.2", store, openai_stub)
    assert seen[1 : len(stored) + 1] == [str(m.content) for m in stored]


def test_redis_history_of_langchain_redis_documents(
    redis_url: str, store: dict[str, str], openai_stub: OpenAIStub
) -> None:
    prefix = f"chat-{uuid.uuid4().hex[:8]}:"
    sessions = ["user-1", "user:2"]
    histories = {s: langchain_redis_history(redis_url, s, prefix) for s in sessions}
    for n, history in enumerate(histories.values()):
        history.add_messages(conversation(n, tools=False))  # it keeps no tool calls
    source = {s: h.messages for s, h in histories.items()}
    args = ("redis-history", "--url", redis_url, "--key-prefix", prefix)

    dry = imported(*args, "--dry-run", env=store)
    assert "would import 10" in dry
    first = imported(*args, env=store)
    assert "2 read, 2 new threads" in first and "imported 10, 0 already present" in first
    for session in sessions:
        record, stored = thread(session, store)
        assert [(m.type, m.content) for m in stored] == [
            (m.type, m.content) for m in source[session]
        ]
        assert len({m.id for m in stored}) == len(stored)  # the documents' ULIDs
        assert record["created_at"] < record["updated_at"]  # the documents' timestamps

    assert "imported 0, 10 already present" in imported(*args, env=store)
    histories["user:2"].add_message(HumanMessage("one more"))
    assert "1 extended" in imported(*args, "--dry-run", env=store)
    extended = imported(*args, env=store)
    assert "1 extended, 1 already complete" in extended and "imported 1," in extended
    _, stored = thread("user:2", store)
    assert [m.content for m in stored] == [m.content for m in histories["user:2"].messages]

    seen = continue_thread("user:2", store, openai_stub)
    assert seen[1 : len(stored) + 1] == [str(m.content) for m in stored]


def test_redis_history_default_prefixes_find_both_layouts(
    redis_server_factory: Any, store: dict[str, str]
) -> None:
    url = redis_server_factory(modules=True).url
    community_redis_history(url, "old-one", "message_store:").add_messages(conversation(1))
    langchain_redis_history(url, "new-one", "chat:").add_messages(conversation(2, tools=False))
    out = imported("redis-history", "--url", url, env=store)
    assert "2 read, 2 new threads" in out and "imported 13" in out
    assert len(thread("old-one", store)[1]) == 8 and len(thread("new-one", store)[1]) == 5
    empty = run_cli("import", "redis-history", "--url", url, "--key-prefix", "none:", env=store)
    assert empty.returncode == 2 and "no chat history under 'none:*'" in empty.stderr
    down = run_cli("import", "redis-history", "--url", "redis://127.0.0.1:1", env=store)
    assert down.returncode == 1 and "cannot reach Redis" in down.stderr


# --------------------------------------------------------------------------- sql-history


def sql_history(url: str, session_id: str, **kwargs: Any) -> Any:
    from langchain_community.chat_message_histories import SQLChatMessageHistory

    return SQLChatMessageHistory(session_id, connection=url, **kwargs)


def test_sql_history_in_sqlite(
    tmp_path: Path, store: dict[str, str], openai_stub: OpenAIStub
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    sessions = ["s-1", "s-2", "s-3", "has space"]
    histories = {s: sql_history(url, s) for s in sessions}
    for n, history in enumerate(histories.values()):
        history.add_messages(conversation(n))
    source = {s: h.messages for s, h in histories.items()}

    first = run_cli("import", "sql-history", "--url", url, env=store)
    assert first.returncode == 1, first.stderr  # one session failed; the others are in
    assert "4 read, 3 new threads" in first.stdout and "1 failed" in first.stdout
    assert "session id is not a valid thread_id" in first.stdout
    assert "has space" in first.stdout and "garden 3" not in first.stdout  # ids, no text
    for session in sessions[:3]:
        assert_same(thread(session, store)[1], source[session])

    again = run_cli("import", "sql-history", "--url", url, env=store)
    assert "0 new threads, 0 extended, 3 already complete" in again.stdout
    assert "imported 0, 24 already present" in again.stdout
    histories["s-3"].add_messages([HumanMessage("what about apples?"), AIMessage("graft them")])
    extended = run_cli("import", "sql-history", "--url", url, env=store)
    assert "1 extended, 2 already complete" in extended.stdout
    assert "imported 2, 24 already present" in extended.stdout
    _, stored = thread("s-3", store)
    assert_same(stored, histories["s-3"].messages)

    seen = continue_thread("s-3", store, openai_stub)
    assert seen[1 : len(stored) + 1] == [str(m.content) for m in stored]

    missing = run_cli("import", "sql-history", "--url", f"sqlite:///{tmp_path}/no.db", env=store)
    assert missing.returncode == 2 and "no SQLite database file" in missing.stderr
    no_table = run_cli("import", "sql-history", "--url", url, "--table", "chats", env=store)
    assert no_table.returncode == 2 and "no table 'chats'" in no_table.stderr


def test_sql_history_with_a_custom_converter_gives_owner_and_times(
    postgres_db_url: str, store: dict[str, str]
) -> None:
    """Any SQLAlchemy database (Postgres here); a converter's extra columns name the user and
    the times."""
    from datetime import UTC, datetime

    from langchain_community.chat_message_histories.sql import BaseMessageConverter
    from langchain_core.messages import message_to_dict
    from sqlalchemy import Column, DateTime, Integer, Text
    from sqlalchemy.orm import declarative_base

    base = declarative_base()

    class Row(base):  # type: ignore[misc,valid-type]
        __tablename__ = "team_chats"
        id = Column(Integer, primary_key=True)
        session_id = Column(Text)
        message = Column(Text)
        user_name = Column(Text)
        created_at = Column(DateTime(timezone=True))

    clock = iter(datetime(2025, 1, 1, 12, minute, tzinfo=UTC) for minute in range(60))

    class Converter(BaseMessageConverter):
        def from_sql_model(self, sql_message: Any) -> BaseMessage:
            return messages_from_dict([json.loads(sql_message.message)])[0]

        def to_sql_model(self, message: BaseMessage, session_id: str) -> Any:
            return Row(
                session_id=session_id,
                message=json.dumps(message_to_dict(message)),
                user_name=f"owner-of-{session_id}",
                created_at=next(clock),
            )

        def get_sql_model_class(self) -> Any:
            return Row

    url = postgres_db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    history = sql_history(url, "t-1", table_name="team_chats", custom_message_converter=Converter())
    history.add_messages(conversation(5))
    args = ("sql-history", "--url", url, "--table", "team_chats", "--user-from", "user_name")
    assert "1 new threads" in imported(*args, env=store)
    record, stored = thread("t-1", store)
    assert_same(stored, history.messages)
    assert record["user_id"] == "owner-of-t-1"
    assert record["created_at"] == datetime(2025, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    assert record["updated_at"] == datetime(2025, 1, 1, 12, 7, tzinfo=UTC).timestamp()
    listed = run_cli("threads", "list", "--user", "owner-of-t-1", env=store)
    assert "t-1" in listed.stdout


# --------------------------------------------------------------------------- dynamodb-history


@pytest.fixture
def dynamodb_table(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh table laid out as DynamoDBChatMessageHistory's documentation creates it; the
    credentials DynamoDB Local accepts, for the library and the command alike."""
    from threadline.dev.services import DYNAMODB_LOCAL_CREDENTIALS, dynamodb_client

    for name, value in DYNAMODB_LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    name = f"chats-{uuid.uuid4().hex[:8]}"
    dynamodb_client(dynamodb_endpoint).create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def dynamodb_history(endpoint: str, table: str, session_id: str) -> Any:
    from langchain_community.chat_message_histories import DynamoDBChatMessageHistory

    return DynamoDBChatMessageHistory(table, session_id, endpoint_url=endpoint)


def test_dynamodb_history(
    dynamodb_endpoint: str, dynamodb_table: str, store: dict[str, str], openai_stub: OpenAIStub
) -> None:
    sessions = ["d-1", "d-2", "d-3"]
    histories = {s: dynamodb_history(dynamodb_endpoint, dynamodb_table, s) for s in sessions}
    for n, history in enumerate(histories.values()):
        history.add_messages(conversation(n))
    source = {s: h.messages for s, h in histories.items()}
    args = ("dynamodb-history", "--url", dynamodb_endpoint, "--table", dynamodb_table)

    assert "would import 24" in imported(*args, "--dry-run", env=store)
    first = imported(*args, env=store)
    assert "3 read, 3 new threads" in first and "imported 24, 0 already present" in first
    for session in sessions:
        assert_same(thread(session, store)[1], source[session])

    assert "imported 0, 24 already present" in imported(*args, env=store)
    histories["d-2"].add_messages([HumanMessage("and the cherries?"), AIMessage("net them")])
    extended = imported(*args, env=store)
    assert "1 extended, 2 already complete" in extended and "imported 2," in extended
    _, stored = thread("d-2", store)
    assert_same(stored, histories["d-2"].messages)

    seen = continue_thread("d-2", store, openai_stub)
    assert seen[1 : len(stored) + 1] == [str(m.content) for m in stored]

    missing = run_cli("import", *args[:3], "--table", "nope", env=store)
    assert missing.returncode == 2 and "no table 'nope'" in missing.stderr
    down = run_cli(
        "import", "dynamodb-history", "--url", "http://127.0.0.1:1", "--table", "t", env=store
    )
    assert down.returncode == 1 and "cannot reach DynamoDB" in down.stderr
    assert "Traceback" not in missing.stderr + down.stderr


# --------------------------------------------------------------------------- firestore-history


@pytest.fixture
def firestore(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client of the emulator; the command finds it through the same variable."""
    from google.cloud import firestore as google_firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "threadline-import")
    client = google_firestore.Client(project="threadline-import")
    yield client
    client.close()


def test_firestore_history_of_langchain_community(
    firestore: Any, store: dict[str, str], openai_stub: OpenAIStub
) -> None:
    from langchain_community.chat_message_histories import FirestoreChatMessageHistory

    collection = f"chats-{uuid.uuid4().hex[:8]}"
    sessions = ["f-1", "f-2"]
    histories = {
        s: FirestoreChatMessageHistory(collection, s, f"user-{s}", firestore_client=firestore)
        for s in sessions
    }
    for n, history in enumerate(histories.values()):
        history.add_messages(conversation(n))
    source = {s: list(h.messages) for s, h in histories.items()}
    args = ("firestore-history", "--url", "firestore://threadline-import")
    args += ("--collection", collection, "--user-from", "user_id")

    first = imported(*args, env=store)
    assert "2 read, 2 new threads" in first and "imported 16, 0 already present" in first
    for session in sessions:
        record, stored = thread(session, store)
        assert_same(stored, source[session])
        assert record["user_id"] == f"user-{session}"
        assert record["created_at"] <= record["updated_at"]

    assert "imported 0, 16 already present" in imported(*args, env=store)
    histories["f-2"].add_messages([HumanMessage("and the pears?"), AIMessage("pick them")])
    extended = imported(*args, env=store)
    assert "1 extended, 1 already complete" in extended and "imported 2," in extended
    _, stored = thread("f-2", store)
    assert_same(stored, histories["f-2"].messages)

    seen = continue_thread("f-2", store, openai_stub)
    assert seen[1 : len(stored) + 1] == [str(m.content) for m in stored]


def test_firestore_history_of_langchain_google_firestore(
    firestore: Any, store: dict[str, str]
) -> None:
    """Documents as langchain-google-firestore writes them (`encode_messages`: each message's
    JSON as bytes). The library itself needs langchain-core < 1, so the test writes its
    layout through the same Google client it uses."""
    collection = "ChatHistory"  # its default, which the command defaults to too
    session = f"g-{uuid.uuid4().hex[:8]}"
    messages = conversation(4, tools=False)
    doc = firestore.collection(collection).document(session)
    doc.set({"messages": [m.model_dump_json().encode() for m in messages]})
    url = ("--url", "firestore://threadline-import")

    out = imported("firestore-history", *url, env=store)
    assert "imported 5" in out
    _, stored = thread(session, store)
    assert_same(stored, messages)
    doc.set({"messages": [m.model_dump_json().encode() for m in [*messages, HumanMessage("hi")]]})
    assert "imported 1, 5 already present" in imported("firestore-history", *url, env=store)
    assert thread(session, store)[1][-1].content == "hi"

    empty = run_cli("import", "firestore-history", *url, "--collection", "nothing", env=store)
    assert empty.returncode == 2 and "no documents in collection 'nothing'" in empty.stderr
    bad = run_cli("import", "firestore-history", "--url", "http://x", env=store)
    assert bad.returncode == 2 and "firestore://PROJECT" in bad.stderr
    down = run_cli(
        "import", "firestore-history", *url, env={**store, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1"}
    )
    assert down.returncode == 1 and "cannot reach Firestore" in down.stderr
    assert "Traceback" not in empty.stderr + bad.stderr + down.stderr


# --------------------------------------------------------------------------- interrupted runs


def test_a_killed_run_resumes_without_duplicates(tmp_path: Path, store: dict[str, str]) -> None:
    """SIGKILL mid-run: every thread is whole or absent, and the next run adds the rest."""
    import signal
    import time

    from langchain_core.messages import message_to_dict

    url = f"sqlite:///{tmp_path / 'history.db'}"
    sql_history(url, "s-0").add_messages([HumanMessage("first"), AIMessage("reply")])
    rows = [
        (f"s-{s}", json.dumps(message_to_dict(m)))
        for s in range(1, 3000)
        for m in (HumanMessage(f"question {s}"), AIMessage(f"answer {s}"))
    ]
    with sqlite3.connect(tmp_path / "history.db") as db:  # the library's rows, in bulk
        db.executemany("INSERT INTO message_store (session_id, message) VALUES (?, ?)", rows)

    def threads() -> list[int]:
        try:
            with sqlite3.connect(store["THREADLINE_SQLITE_PATH"]) as db:
                return [r[0] for r in db.execute("SELECT message_count FROM threadline_threads")]
        except sqlite3.Error:
            return []

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "OPENAI_"))}
    run = subprocess.Popen(
        [THREADLINE, "import", "sql-history", "--url", url],
        env={**clean, **store},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(threads()) < 200 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    before = threads()
    assert 200 <= len(before) < 3000, "the run was not stopped midway"
    assert set(before) == {2}  # whole threads only

    resumed = imported("sql-history", "--url", url, env=store)
    assert f"{3000 - len(before)} new threads, 0 extended, {len(before)} already complete" in (
        resumed
    )
    assert f"imported {6000 - 2 * len(before)}, {2 * len(before)} already present" in resumed
    after = threads()
    assert len(after) == 3000 and set(after) == {2}
