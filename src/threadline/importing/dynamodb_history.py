"""langchain-community `DynamoDBChatMessageHistory`: one item per session, keyed by its
partition key (`SessionId` by default), the whole conversation in one list attribute
(`History`: `messages_to_dict`), no ids or times of its own.

The table is scanned page by page (boto3, in a thread); each item becomes a session. Its other
attributes are fields `--user-from` may name. `--url` is the endpoint (`http://localhost:8000`
for DynamoDB Local) or `aws://REGION` for AWS itself; credentials come from the environment as
boto3 finds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from threadline.importing.sessions import (
    SourceError,
    SourceMissingError,
    SourceSession,
    SourceUnreachableError,
    decoded_session,
)

SOURCE = "dynamodb-history"
HISTORY = "History"  # the library's default `history_messages_key`


def _plain(value: Any) -> Any:
    """DynamoDB's numbers (Decimal) as the ints and floats the messages were written with."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class DynamoDBHistoryReader:
    def __init__(self, table: Any, keys: list[str], item_count: int) -> None:
        self._table = table
        self._keys = keys  # partition key, then the sort key if any
        self._item_count = item_count

    async def count_sessions(self) -> int:
        """DescribeTable's item count: refreshed by DynamoDB every few hours, so the progress
        bar's total may be a little off on AWS (exact on DynamoDB Local)."""
        return self._item_count

    def _pages(self) -> Iterator[list[dict[str, Any]]]:
        kwargs: dict[str, Any] = {}
        while True:
            page = self._table.scan(**kwargs)
            yield page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def sessions(self) -> AsyncIterator[SourceSession]:
        pages = self._pages()
        while (items := await asyncio.to_thread(next, pages, None)) is not None:
            for item in items:
                yield self._session(_plain(item))

    def _session(self, item: dict[str, Any]) -> SourceSession:
        session_id = ":".join(str(item.get(k, "")) for k in self._keys)
        history = item.get(HISTORY)
        if not isinstance(history, list):
            return SourceSession(session_id, [], problem=f"no {HISTORY} list in the item")
        fields = {k: v for k, v in item.items() if k not in (HISTORY, *self._keys)}
        return decoded_session(
            SOURCE, self._table.name, session_id, list(enumerate(history)), fields=fields
        )


def _resource(url: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3})
    if url.startswith(("http://", "https://")):
        return boto3.resource("dynamodb", endpoint_url=url, config=config)
    if url.startswith("aws://") and len(url) > len("aws://"):
        region = url[len("aws://") :].strip("/")
        return boto3.resource("dynamodb", region_name=region, config=config)
    raise SourceError("--url must be the endpoint (http://host:port) or aws://REGION")


def _open(url: str, table_name: str) -> DynamoDBHistoryReader:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    try:
        table = _resource(url).Table(table_name)
        described = table.meta.client.describe_table(TableName=table_name)["Table"]
    except NoRegionError:
        raise SourceError("no AWS region: set AWS_DEFAULT_REGION or use aws://REGION") from None
    except NoCredentialsError:
        raise SourceUnreachableError("no AWS credentials in the environment") from None
    except EndpointConnectionError as exc:
        raise SourceUnreachableError(f"cannot reach DynamoDB: {exc}") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise SourceMissingError(f"no table {table_name!r} there") from None
        raise SourceUnreachableError(f"DynamoDB refused: {code or exc}") from None
    except BotoCoreError as exc:
        raise SourceUnreachableError(f"cannot reach DynamoDB: {exc}") from None
    schema = sorted(described["KeySchema"], key=lambda k: k["KeyType"] != "HASH")
    return DynamoDBHistoryReader(
        table, [k["AttributeName"] for k in schema], int(described.get("ItemCount", 0))
    )


@asynccontextmanager
async def open_history(url: str, table: str | None) -> AsyncIterator[DynamoDBHistoryReader]:
    if not table:
        raise SourceError("dynamodb-history needs --table")
    yield await asyncio.to_thread(_open, url, table)
