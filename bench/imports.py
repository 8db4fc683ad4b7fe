"""Moving in at scale: `threadline import` of 1,000 sessions x 20 messages from each source
into the sqlite backend.

    nice .venv/bin/python -m bench.imports [--sessions 1000] [--messages 20]
        [--sources postgres-history,redis-history,...] [--out /tmp/import_bench.txt]

Starts throwaway Postgres, Redis Stack, DynamoDB Local and the Firestore emulator (no Docker),
fills each with histories in its library's layout (written by the library itself where that
is fast; bulk writes of the same layout where the library rewrites a session per message),
then runs the command as a user does (a subprocess, a fresh sqlite file per source) and times
it: a first run that imports everything and a second that finds nothing new. redis-history is
measured for each layout (`redis-history:lists`, langchain-community; `redis-history:json`,
langchain-redis).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, messages_to_dict

from bench.common import bench_services
from threadline.dev.services import (
    DYNAMODB_LOCAL_CREDENTIALS,
    DynamoDBLocal,
    FirestoreEmulator,
    dynamodb_client,
    free_port,
)

THREADLINE = str(Path(sys.executable).parent / "threadline")
PROJECT = "threadline-bench"


def conversation(session: int, messages: int) -> list[BaseMessage]:
    return [
        (HumanMessage if n % 2 == 0 else AIMessage)(
            f"session {session} message {n}: " + "lorem ipsum dolor sit amet " * 4
        )
        for n in range(messages)
    ]


def fill_postgres(url: str, sessions: int, messages: int) -> list[str]:
    import psycopg
    from langchain_postgres import PostgresChatMessageHistory

    with psycopg.connect(url) as conn:
        PostgresChatMessageHistory.create_tables(conn, "chat_history")
        for s in range(sessions):
            history = PostgresChatMessageHistory(
                "chat_history", str(uuid.uuid4()), sync_connection=conn
            )
            history.add_messages(conversation(s, messages))
    return ["--table", "chat_history"]


def fill_redis_lists(url: str, sessions: int, messages: int) -> list[str]:
    from langchain_community.chat_message_histories import RedisChatMessageHistory

    for s in range(sessions):
        history = RedisChatMessageHistory(f"s-{s}", url=url, key_prefix="message_store:")
        history.add_messages(conversation(s, messages))
    return ["--key-prefix", "message_store:"]


def fill_redis_json(url: str, sessions: int, messages: int) -> list[str]:
    from langchain_redis import RedisChatMessageHistory

    # One instance, moved from session to session: langchain-redis 0.2.6 cannot open an index
    # that exists already with redis-py 8 (it parses FT.INFO as a list).
    history = RedisChatMessageHistory("s-0", redis_url=url, key_prefix="chat:")
    for s in range(sessions):
        history.session_id = f"s-{s}"
        history.add_messages(conversation(s, messages))
    return ["--key-prefix", "chat:"]


def fill_sql(url: str, sessions: int, messages: int) -> list[str]:
    from langchain_community.chat_message_histories import SQLChatMessageHistory

    for s in range(sessions):
        SQLChatMessageHistory(f"s-{s}", connection=url).add_messages(conversation(s, messages))
    return ["--table", "message_store"]


def fill_dynamodb(endpoint: str, sessions: int, messages: int) -> list[str]:
    """The library's item layout, one put per session (its `add_messages` rewrites the item
    once per message)."""
    import boto3

    dynamodb_client(endpoint).create_table(
        TableName="SessionTable",
        KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    table = boto3.resource("dynamodb", endpoint_url=endpoint).Table("SessionTable")
    with table.batch_writer() as batch:
        for s in range(sessions):
            batch.put_item(
                Item={"SessionId": f"s-{s}", "History": messages_to_dict(conversation(s, messages))}
            )
    return ["--table", "SessionTable"]


def fill_firestore(_: str, sessions: int, messages: int) -> list[str]:
    """langchain-community's document layout, 500 documents per batch (its `add_messages`
    rewrites the document once per message)."""
    from google.cloud import firestore

    client = firestore.Client(project=PROJECT)
    collection = client.collection("chat_history")
    batch = client.batch()
    for s in range(sessions):
        doc = {
            "id": f"s-{s}",
            "user_id": "u",
            "messages": messages_to_dict(conversation(s, messages)),
        }
        batch.set(collection.document(f"s-{s}"), doc)
        if s % 500 == 499:
            batch.commit()
            batch = client.batch()
    batch.commit()
    client.close()
    return ["--collection", "chat_history"]


def run_import(source: str, url: str, args: list[str], sqlite: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(
        THREADLINE_MODEL="fake",
        THREADLINE_CHECKPOINTER="sqlite",
        THREADLINE_SQLITE_PATH=str(sqlite),
    )
    started = time.perf_counter()
    done = subprocess.run(
        [THREADLINE, "import", source, "--url", url, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{source} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return elapsed, done.stdout.strip().replace("\n", "; ")


@contextmanager
def jvm_services(wanted: set[str]) -> Iterator[dict[str, str]]:
    found: dict[str, str] = {}
    with ExitStack() as stack:
        if "dynamodb-history" in wanted:
            data = Path(tempfile.mkdtemp(prefix="threadline-bench-ddb-"))
            stack.callback(shutil.rmtree, data, True)
            ddb = DynamoDBLocal(free_port(), data)
            ddb.start()
            stack.callback(ddb.stop)
            found["dynamodb"] = ddb.endpoint_url
            os.environ.update(DYNAMODB_LOCAL_CREDENTIALS)
        if "firestore-history" in wanted:
            data = Path(tempfile.mkdtemp(prefix="threadline-bench-fs-"))
            stack.callback(shutil.rmtree, data, True)
            fs = FirestoreEmulator(free_port(), data)
            fs.start()
            stack.callback(fs.stop)
            os.environ["FIRESTORE_EMULATOR_HOST"] = fs.host
            found["firestore"] = f"firestore://{PROJECT}"
        yield found


ALL = [
    "postgres-history",
    "redis-history:lists",
    "redis-history:json",
    "sql-history",
    "dynamodb-history",
    "firestore-history",
]


def main(sessions: int, messages: int, sources: list[str], out: Path) -> None:
    total = sessions * messages
    lines = [
        f"threadline import: {sessions} sessions x {messages} messages = {total} messages "
        f"per source, into the sqlite backend (a fresh file each); wall time of the command, "
        f"process start included; {os.cpu_count()} CPUs, nice'd",
    ]
    print(lines[0], flush=True)
    wanted = {s.split(":")[0] for s in sources}
    with bench_services() as services, jvm_services(wanted) as jvm:
        work = Path(tempfile.mkdtemp(prefix="threadline-bench-import-"))
        sql_url = f"sqlite:///{work / 'history.db'}"
        plans: dict[str, tuple[str, str, Callable[[str, int, int], list[str]]]] = {
            "postgres-history": ("postgres-history", services.postgres_url, fill_postgres),
            "redis-history:lists": (
                "redis-history",
                services.plain_redis_url,
                fill_redis_lists,
            ),
            "redis-history:json": (
                "redis-history",
                services.redis_stack_url,
                fill_redis_json,
            ),
            "sql-history": ("sql-history", sql_url, fill_sql),
            "dynamodb-history": ("dynamodb-history", jvm.get("dynamodb", ""), fill_dynamodb),
            "firestore-history": ("firestore-history", jvm.get("firestore", ""), fill_firestore),
        }
        for name in sources:
            source, url, fill = plans[name]
            started = time.perf_counter()
            args: Any = fill(url, sessions, messages)
            filled = time.perf_counter() - started
            sqlite = work / f"{uuid.uuid4().hex}.sqlite"
            first, summary = run_import(source, url, args, sqlite)
            second, again = run_import(source, url, args, sqlite)
            line = (
                f"{name}: first run {first:.1f} s = {total / first:,.0f} messages/s "
                f"({sessions / first:,.1f} sessions/s); second run (nothing new) {second:.1f} s; "
                f"source filled in {filled:.1f} s\n    first: {summary}\n    second: {again}"
            )
            print(line, flush=True)
            lines.append(line)
        shutil.rmtree(work, ignore_errors=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument(
        "--sources", default=",".join(ALL), help="comma-separated, of: " + ", ".join(ALL)
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/import_bench.txt"))
    options = parser.parse_args()
    chosen = [s.strip() for s in options.sources.split(",") if s.strip()]
    main(options.sessions, options.messages, chosen, options.out)
