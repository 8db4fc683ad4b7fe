"""The table's I/O, blocking (boto3): strongly consistent reads, paginated queries, and
writes that are all-or-nothing whenever DynamoDB's transaction limits allow.

The saver calls these from worker threads; nothing here knows what a checkpoint is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from threadline.checkpointers.durable import CheckpointStoreUnavailable
from threadline.checkpointers.dynamodb.layout import (
    CHUNK,
    CHUNKS,
    TX_BUDGET,
    TX_MAX_ITEMS,
    Item,
    S,
    chunk_prefix,
    chunk_refs,
    item_size,
    joined,
    key_of,
)
from threadline.settings import SettingsError

# Conflicting transactions on the same items are cancelled, not queued: try again briefly.
CONFLICT_RETRIES = 5
UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
TTL_ATTRIBUTE = "expires"  # Unix seconds; DynamoDB deletes the item some time after


def dynamodb_client(
    endpoint_url: str | None = None,
    *,
    region_name: str | None = None,
    max_workers: int = 8,
    timeout_seconds: float = 10.0,
) -> Any:
    """A low-level boto3 client: region and credentials from boto3's usual sources
    (environment, profile, instance role); a missing region is a settings error."""
    import boto3
    from botocore.config import Config

    region = region_name or boto3.session.Session().region_name
    if region is None:
        raise SettingsError(
            "THREADLINE_CHECKPOINTER=dynamodb needs an AWS region: set AWS_REGION "
            "(or AWS_DEFAULT_REGION, or a profile's region)"
        )
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(
            max_pool_connections=max_workers,
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
            retries={"mode": "standard", "max_attempts": 4},
        ),
    )


@dataclass
class Action:
    """One action of a transaction. An `optional` one is dropped (and the rest retried) if
    its condition alone fails: a receipt that already exists, say."""

    body: dict[str, Any]  # {"Put": {...}} / {"Update": {...}} / {"Delete": {...}}
    optional: bool = False

    @property
    def size(self) -> int:
        (inner,) = self.body.values()
        parts = [inner.get("Item") or inner.get("Key") or {}]
        parts.append(inner.get("ExpressionAttributeValues") or {})
        return sum(item_size(p) for p in parts)


class StoreError(RuntimeError):
    """DynamoDB refused a write for a reason other than an optional condition."""


class Table:
    """One DynamoDB table through a low-level boto3 client (thread-safe)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def call(self, operation: str, *, table: bool = True, **kwargs: Any) -> Any:
        """`operation` on the client (on this table unless `table` is False); an unreachable
        DynamoDB is `CheckpointStoreUnavailable`."""
        if table:
            kwargs["TableName"] = self.name
        try:
            return getattr(self.client, operation)(**kwargs)
        except UNREACHABLE as exc:
            raise CheckpointStoreUnavailable(
                f"DynamoDB unavailable, nothing was stored or read ({type(exc).__name__})"
            ) from exc

    # ----------------------------------------------------------------- schema

    def create(self) -> None:
        """The table (on-demand, string `pk`/`sk`) and its TTL attribute, if missing."""
        try:
            self.call("describe_table")
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            try:
                self.call(
                    "create_table",
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
            except ClientError as race:  # another process created it meanwhile
                if race.response["Error"]["Code"] != "ResourceInUseException":
                    raise
        self.client.get_waiter("table_exists").wait(
            TableName=self.name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        ttl = self.call("describe_time_to_live")["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") in (None, "DISABLED"):
            try:
                self.call(
                    "update_time_to_live",
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                )
            except ClientError as race:  # another process enabled it meanwhile
                if "already enabled" not in race.response["Error"].get("Message", ""):
                    raise

    # ------------------------------------------------------------------ reads

    def get(self, pk: str, sk: str) -> Item | None:
        found = self.call("get_item", Key={"pk": S(pk), "sk": S(sk)}, ConsistentRead=True)
        item = found.get("Item")
        return self.whole(item) if item is not None else None

    def get_many(self, keys: Sequence[Item], *, join: bool = True) -> list[Item]:
        """The items of `keys` that exist (any order), chunked values joined unless `join`
        is False."""
        found: list[Item] = []
        pending = list({(k["pk"]["S"], k["sk"]["S"]): key_of(k) for k in keys}.values())
        while pending:
            batch, pending = pending[:100], pending[100:]
            request: dict[str, Any] = {self.name: {"Keys": batch, "ConsistentRead": True}}
            while request:
                answer = self.call("batch_get_item", table=False, RequestItems=request)
                found.extend(answer["Responses"].get(self.name, []))
                request = answer.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(0.05)
        return [self.whole(item) for item in found] if join else found

    def query(
        self,
        pk: str,
        *,
        prefix: str | None = None,
        between: tuple[str, str] | None = None,
        forward: bool = True,
        page_size: int | Sequence[int] | None = None,
        keys_only: bool = False,
    ) -> Iterator[Item]:
        """A partition's items (sort key starting with `prefix`, or within `between`), page
        by page (of `page_size` items, or of each size in turn, the last repeating); chunked
        values are not joined (see `whole`)."""
        condition = "pk = :pk"
        values: dict[str, Any] = {":pk": S(pk)}
        if prefix is not None:
            condition += " AND begins_with(sk, :prefix)"
            values[":prefix"] = S(prefix)
        elif between is not None:
            condition += " AND sk BETWEEN :low AND :high"
            values[":low"], values[":high"] = S(between[0]), S(between[1])
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
            "ScanIndexForward": forward,
        }
        sizes = [page_size] if isinstance(page_size, int) else list(page_size or [])
        if keys_only:
            # Keys, and what deleting an item needs: its chunks, and what it belongs to.
            kwargs["ProjectionExpression"] = "pk, sk, #chunks, #cid, #kind, #ns"
            kwargs["ExpressionAttributeNames"] = {
                "#chunks": CHUNKS,
                "#cid": "cid",
                "#kind": "kind",
                "#ns": "ns",
            }
        while True:
            if sizes:  # the last size repeats
                kwargs["Limit"] = sizes.pop(0) if len(sizes) > 1 else sizes[0]
            page = self.call("query", **kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def scan(self, filter: str, values: dict[str, Any], names: dict[str, str]) -> Iterator[Item]:
        """Every item of the table matching `filter` (a whole-table read: for sweeps and
        run deletion, which have no partition to go by)."""
        kwargs: dict[str, Any] = {
            "FilterExpression": filter,
            "ExpressionAttributeValues": values,
            "ExpressionAttributeNames": names,
            "ConsistentRead": True,
        }
        while True:
            page = self.call("scan", **kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def whole(self, item: Item) -> Item:
        """`item` with its chunked values read back and joined."""
        for attr, (_, digest) in chunk_refs(item).items():
            prefix = chunk_prefix(item["sk"]["S"], attr, digest)
            item = joined(item, attr, list(self.query(item["pk"]["S"], prefix=prefix)))
        return item

    # ----------------------------------------------------------------- writes

    def transact(self, actions: Sequence[Action]) -> None:
        """All of `actions` or none (optional ones whose condition fails are dropped)."""
        actions = list(actions)
        attempt = 0
        while actions:
            try:
                bodies = [a.body for a in actions]
                self.call("transact_write_items", table=False, TransactItems=bodies)
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code", "None") for r in exc.response["CancellationReasons"]]
                failed = [i for i, code in enumerate(reasons) if code not in ("None", None)]
                if failed and all(
                    actions[i].optional and reasons[i] == "ConditionalCheckFailed" for i in failed
                ):
                    actions = [a for i, a in enumerate(actions) if i not in failed]
                    continue
                if "TransactionConflict" in reasons and attempt < CONFLICT_RETRIES:
                    attempt += 1
                    time.sleep(0.02 * 2**attempt)
                    continue
                raise StoreError(f"DynamoDB cancelled the transaction: {reasons}") from exc

    def fits(self, first: Sequence[Item], actions: Sequence[Action]) -> bool:
        """Whether `first` and `actions` fit one transaction."""
        whole = [*self._puts(first), *actions]
        return len(whole) <= TX_MAX_ITEMS and sum(a.size for a in whole) <= TX_BUDGET

    def _puts(self, items: Sequence[Item]) -> list[Action]:
        return [Action({"Put": {"TableName": self.name, "Item": item}}) for item in items]

    def transact_in_parts(self, actions: Sequence[Action]) -> None:
        """Independent `actions`, in as few transactions as DynamoDB's limits allow."""
        part: list[Action] = []
        for action in actions:
            if part and not self.fits([], [*part, action]):
                self.transact(part)
                part = []
            part.append(action)
        if part:
            self.transact(part)

    def commit(self, first: Sequence[Item], actions: Sequence[Action]) -> None:
        """Store `first` (items nothing refers to yet: chunks, new channel values) and
        `actions` in one transaction when DynamoDB's limits allow; otherwise `first` goes
        ahead in batches and `actions` commit last, so no reader ever sees an item that
        refers to something missing."""
        if self.fits(first, actions):
            self.transact([*self._puts(first), *actions])
            return
        if not self.fits([], actions):
            raise StoreError("a commit larger than one DynamoDB transaction")
        self.put_many(first)
        self.transact(actions)

    def put_many(self, items: Sequence[Item]) -> None:
        self._batch([{"PutRequest": {"Item": item}} for item in items])

    def delete_keys(self, keys: Sequence[Item]) -> None:
        unique = {(k["pk"]["S"], k["sk"]["S"]): key_of(k) for k in keys}
        self._batch([{"DeleteRequest": {"Key": k}} for k in unique.values()])

    def delete_owned(self, items: Sequence[Item]) -> None:
        """Delete `items` and every chunk any of them owns (or once owned)."""
        chunks = [
            c
            for item in items
            if item.get("chunks")
            for c in self.query(
                item["pk"]["S"], prefix=chunk_prefix(item["sk"]["S"]), keys_only=True
            )
        ]
        self.delete_keys([*items, *chunks])

    def _batch(self, requests: list[dict[str, Any]]) -> None:
        size = 0
        batch: list[dict[str, Any]] = []
        for request in requests:
            item = request.get("PutRequest", {}).get("Item") or {}
            if batch and (len(batch) == 25 or size + item_size(item) > TX_BUDGET):
                self._send(batch)
                batch, size = [], 0
            batch.append(request)
            size += item_size(item)
        if batch:
            self._send(batch)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        request: dict[str, Any] = {self.name: batch}
        delay = 0.02
        while request:
            answer = self.call("batch_write_item", table=False, RequestItems=request)
            request = answer.get("UnprocessedItems") or {}
            if request:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)


def is_chunk(item: Item) -> bool:
    return item.get("kind", {}).get("S") == CHUNK
