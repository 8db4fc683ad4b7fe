"""DynamoDB Local and the Firestore emulator are real servers that enforce what the DynamoDB and
Firestore savers (issue 16) will rely on: conditional writes, all-or-nothing transactions, the
400 KB item limit, Firestore transactions; and `threadline services` starts and stops them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from threadline.dev.services import (
    DevServices,
    DynamoDBLocal,
    FirestoreEmulator,
    ServiceError,
    dynamodb_client,
    free_port,
)

THREADLINE = str(Path(sys.executable).parent / "threadline")
KB = 1024


@pytest.fixture
def ddb(dynamodb_endpoint: str) -> Any:
    return dynamodb_client(dynamodb_endpoint)


@pytest.fixture
def table(ddb: Any) -> Iterator[str]:
    """A fresh table keyed like a checkpoint store: thread (hash) + position (range)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    ddb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    yield name
    ddb.delete_table(TableName=name)


def _item(sk: str, **attrs: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"pk": {"S": "thread-1"}, "sk": {"S": sk}, **attrs}


def _get(ddb: Any, table: str, sk: str) -> dict[str, Any] | None:
    key = {"pk": {"S": "thread-1"}, "sk": {"S": sk}}
    return ddb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_dynamodb_conditional_writes_refuse_a_stale_writer(ddb: Any, table: str) -> None:
    create_only = "attribute_not_exists(pk)"
    ddb.put_item(TableName=table, Item=_item("head", v={"N": "1"}), ConditionExpression=create_only)
    with pytest.raises(ClientError) as refused:
        ddb.put_item(
            TableName=table, Item=_item("head", v={"N": "9"}), ConditionExpression=create_only
        )
    assert _error_code(refused) == "ConditionalCheckFailedException"

    # Compare-and-set on a version: the writer that read v=1 wins, a second one with v=1 loses.
    def advance(expected: str, new: str) -> None:
        ddb.put_item(
            TableName=table,
            Item=_item("head", v={"N": new}),
            ConditionExpression="v = :expected",
            ExpressionAttributeValues={":expected": {"N": expected}},
        )

    advance("1", "2")
    with pytest.raises(ClientError) as stale:
        advance("1", "3")
    assert _error_code(stale) == "ConditionalCheckFailedException"
    assert _get(ddb, table, "head") == _item("head", v={"N": "2"})


def test_dynamodb_transaction_is_all_or_nothing(ddb: Any, table: str) -> None:
    ddb.put_item(TableName=table, Item=_item("head", v={"N": "1"}))
    checkpoint = {"Put": {"TableName": table, "Item": _item("cp-2", data={"S": "x"})}}

    def move_head(expected: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": table,
                "Key": {"pk": {"S": "thread-1"}, "sk": {"S": "head"}},
                "UpdateExpression": "SET v = :new",
                "ConditionExpression": "v = :expected",
                "ExpressionAttributeValues": {":new": {"N": "2"}, ":expected": {"N": expected}},
            }
        }

    with pytest.raises(ClientError) as cancelled:
        ddb.transact_write_items(TransactItems=[checkpoint, move_head("0")])
    assert _error_code(cancelled) == "TransactionCanceledException"
    reasons = [r["Code"] for r in cancelled.value.response["CancellationReasons"]]
    assert reasons == ["None", "ConditionalCheckFailed"]
    assert _get(ddb, table, "cp-2") is None  # the unconditional put was not applied either
    assert _get(ddb, table, "head") == _item("head", v={"N": "1"})

    ddb.transact_write_items(TransactItems=[checkpoint, move_head("1")])
    assert _get(ddb, table, "cp-2") == _item("cp-2", data={"S": "x"})
    assert _get(ddb, table, "head") == _item("head", v={"N": "2"})


def test_dynamodb_refuses_an_item_over_400_kb(ddb: Any, table: str) -> None:
    ddb.put_item(TableName=table, Item=_item("fits", blob={"B": b"x" * (399 * KB)}))
    with pytest.raises(ClientError) as refused:
        ddb.put_item(TableName=table, Item=_item("too-big", blob={"B": b"x" * (400 * KB)}))
    assert _error_code(refused) == "ValidationException"
    assert "size" in refused.value.response["Error"]["Message"].lower()
    assert _get(ddb, table, "too-big") is None
    # The same limit holds inside a transaction.
    with pytest.raises(ClientError):
        ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": _item("t-big", blob={"B": b"x" * 401 * KB})}}
            ]
        )
    assert _get(ddb, table, "t-big") is None


@pytest.fixture
def firestore_env(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A project of its own on the session emulator (Google's clients read the variable)."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    return f"threadline-test-{uuid.uuid4().hex[:8]}"


def test_firestore_transaction_writes_and_reads_back(firestore_env: str) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import firestore

    client = firestore.Client(project=firestore_env)
    head = client.collection("threads").document("thread-1")

    @firestore.transactional
    def advance(transaction: firestore.Transaction) -> int:
        snapshot = head.get(transaction=transaction)
        version = int(snapshot.get("v")) + 1 if snapshot.exists else 1
        transaction.set(head, {"v": version, "checkpoint": f"cp-{version}"})
        return version

    assert advance(client.transaction()) == 1
    assert advance(client.transaction()) == 2
    assert head.get().to_dict() == {"v": 2, "checkpoint": "cp-2"}
    with pytest.raises(AlreadyExists):  # create() is a precondition: refused, not overwritten
        head.create({"v": 0})
    assert head.get().to_dict() == {"v": 2, "checkpoint": "cp-2"}
    client.close()


async def test_firestore_async_transaction_writes_and_reads_back(firestore_env: str) -> None:
    from google.cloud import firestore

    client = firestore.AsyncClient(project=firestore_env)
    head = client.collection("threads").document("thread-1")

    @firestore.async_transactional
    async def advance(transaction: firestore.AsyncTransaction) -> int:
        snapshot = await head.get(transaction=transaction)
        version = int(snapshot.get("v")) + 1 if snapshot.exists else 1
        transaction.set(head, {"v": version})
        return version

    assert await advance(client.transaction()) == 1
    assert await advance(client.transaction()) == 2
    assert (await head.get()).to_dict() == {"v": 2}
    client.close()


def _refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_services_start_and_stop_dynamodb_and_firestore(tmp_path: Path) -> None:
    env = DevServices.start(tmp_path, dynamodb=True, firestore=True)
    try:
        endpoint = env["THREADLINE_DYNAMODB_ENDPOINT_URL"]
        firestore_host = env["FIRESTORE_EMULATOR_HOST"]
        assert endpoint.startswith("http://127.0.0.1:")
        assert firestore_host.startswith("127.0.0.1:")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        assert all(s.running for s in DevServices.status(tmp_path))
        assert DevServices.start(tmp_path, dynamodb=True) == env  # idempotent while running
        assert "TableNames" in dynamodb_client(endpoint).list_tables()
        with urllib.request.urlopen(f"http://{firestore_host}/", timeout=5) as answer:
            assert answer.status == 200
    finally:
        stopped = DevServices.stop(tmp_path)
    assert {"dynamodb", "firestore"} <= set(stopped)
    # Nothing answers any more: gcloud's JVM went down with it, not just the gcloud process.
    assert _refuses(endpoint.removeprefix("http://"))
    assert _refuses(firestore_host)


def test_a_missing_program_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java = shutil.which("java")
    assert java is not None, "java is needed: apt-get install openjdk-17-jre-headless"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("THREADLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("THREADLINE_DYNAMODB_LOCAL_DIR", raising=False)
    with pytest.raises(ServiceError, match="apt-get install openjdk-17-jre-headless"):
        DynamoDBLocal(free_port(), tmp_path / "ddb").start()
    with pytest.raises(ServiceError, match="apt-get install openjdk-17-jre-headless"):
        FirestoreEmulator(free_port(), tmp_path / "fs").start()

    (bin_dir / "java").symlink_to(java)
    with pytest.raises(ServiceError, match=r"npm not found.*apt-get install npm"):
        DynamoDBLocal(free_port(), tmp_path / "ddb").start()
    with pytest.raises(ServiceError, match=r"gcloud not found.*google-cloud-cli"):
        FirestoreEmulator(free_port(), tmp_path / "fs").start()


def test_services_start_refuses_an_unknown_extra(tmp_path: Path) -> None:
    done = subprocess.run(
        [THREADLINE, "services", "start", "--state-dir", str(tmp_path), "--with", "dynamo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown service dynamo" in done.stderr
    assert "redis-cluster, dynamodb, firestore" in done.stderr
    assert not (tmp_path / "services.json").exists()
