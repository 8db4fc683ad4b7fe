"""Turn receipts and thread records as DynamoDB items and transaction actions.

Both are written by the checkpoint's own transaction (see `saver.put`), so they exist exactly
when their turn does. A record's upsert is an `UpdateItem` whose `if_not_exists` keeps owner,
title, creation and retention as the thread's first turn left them (`records.merged`), so a
turn never has to read the record first. It is applied to the canonical item (in the
thread's partition) and to its copy in the tenant's partition alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from threadline.checkpointers.dynamodb.layout import (
    LISTED_RECORD,
    NULL,
    RECEIPT,
    RECORD,
    RECORD_SK,
    Item,
    N,
    S,
    n,
    receipt_sk,
    s,
    tenant_pk,
    thread_pk,
)
from threadline.checkpointers.dynamodb.table import TTL_ATTRIBUTE, Action
from threadline.checkpointers.receipts import Receipt
from threadline.checkpointers.records import ThreadRecord, checked_changes

# What a turn's upsert always sets; every other field only on the record's first write.
TURN_FIELDS = ("updated_at", "message_count")
FIELDS = tuple(f.name for f in fields(ThreadRecord) if f.name != "thread_key")


def encode(name: str, value: Any) -> dict[str, Any]:
    """A record field as a DynamoDB attribute value."""
    if name == "metadata":
        return S(json.dumps(value, sort_keys=True))
    if value is None:
        return NULL()
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return N(value)
    return S(str(value))


def record_from(item: Mapping[str, Any]) -> ThreadRecord:
    return ThreadRecord(
        thread_key=str(s(item, "key")),
        tenant=str(s(item, "tenant")),
        thread_id=str(s(item, "thread_id")),
        user_id=s(item, "user_id"),
        title=str(s(item, "title", "")),
        created_at=float(n(item, "created_at") or 0.0),
        updated_at=float(n(item, "updated_at") or 0.0),
        message_count=int(n(item, "message_count") or 0),
        metadata=json.loads(s(item, "metadata") or "{}"),
        ttl_seconds=n(item, "ttl_seconds"),
        hold=bool(item.get("hold", {}).get("BOOL", False)),
        status=str(s(item, "status")),
        swept_at=n(item, "swept_at"),
    )


def record_keys(record: ThreadRecord) -> list[Item]:
    """The canonical item's key, then the tenant copy's."""
    return [
        {"pk": S(thread_pk(record.thread_key)), "sk": S(RECORD_SK)},
        {"pk": S(tenant_pk(record.tenant)), "sk": S(record.thread_key)},
    ]


def upsert_actions(table: str, record: ThreadRecord) -> list[Action]:
    """A turn's record upsert, on both copies (see `records.merged`)."""
    values = asdict(record)
    names = {f"#{f}": f for f in FIELDS} | {"#kind": "kind", "#key": "key"}
    sets = [f"#{f} = :{f}" for f in TURN_FIELDS]
    sets += [f"#{f} = if_not_exists(#{f}, :{f})" for f in FIELDS if f not in TURN_FIELDS]
    sets += ["#kind = :kind", "#key = :key"]
    attribute_values = {f":{f}": encode(f, values[f]) for f in FIELDS}
    attribute_values[":key"] = S(record.thread_key)
    return [
        Action(
            {
                "Update": {
                    "TableName": table,
                    "Key": key,
                    "UpdateExpression": "SET " + ", ".join(sets),
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": attribute_values | {":kind": S(kind)},
                }
            }
        )
        for key, kind in zip(record_keys(record), (RECORD, LISTED_RECORD), strict=True)
    ]


def update_actions(
    table: str,
    record: ThreadRecord,
    changes: Mapping[str, Any],
    expect: Mapping[str, Any] | None,
) -> list[Action]:
    """Set `changes` (not empty) on both copies, if both exist and the canonical one matches
    `expect`."""
    changes, expect = checked_changes(changes), checked_changes(expect or {})
    sets = "SET " + ", ".join(f"#{f} = :c_{f}" for f in changes)
    set_values = {f":c_{f}": encode(f, v) for f, v in changes.items()}
    conditions = ["attribute_exists(pk)"]
    expected: dict[str, Any] = {}
    for f, v in expect.items():
        if v is None:
            conditions.append(f"(attribute_not_exists(#{f}) OR attribute_type(#{f}, :null))")
            expected[":null"] = S("NULL")
        else:
            conditions.append(f"#{f} = :e_{f}")
            expected[f":e_{f}"] = encode(f, v)
    canonical, copy = record_keys(record)
    return [
        Action(
            {
                "Update": {
                    "TableName": table,
                    "Key": key,
                    "UpdateExpression": sets,
                    "ConditionExpression": " AND ".join(where),
                    "ExpressionAttributeNames": {f"#{f}": f for f in [*changes, *names]},
                    "ExpressionAttributeValues": set_values | values,
                }
            }
        )
        for key, where, names, values in (
            (canonical, conditions, expect, expected),
            (copy, conditions[:1], {}, {}),
        )
    ]


def receipt_actions(table: str, thread_id: str, receipts: list[Receipt]) -> list[Action]:
    """Each receipt, unless a live one of that name exists (the first turn stored keeps it)."""
    now = time.time()
    return [
        Action(
            {
                "Put": {
                    "TableName": table,
                    "Item": {
                        "pk": S(thread_pk(thread_id)),
                        "sk": S(receipt_sk(r.name)),
                        "kind": S(RECEIPT),
                        "digest": S(r.digest),
                        "ns": S(r.checkpoint_ns),
                        "cid": S(r.checkpoint_id),
                        "expires_at": N(float(r.expires_at)),
                        TTL_ATTRIBUTE: N(int(r.expires_at) + 1),
                    },
                    "ConditionExpression": "attribute_not_exists(sk) OR expires_at <= :now",
                    "ExpressionAttributeValues": {":now": N(now)},
                }
            },
            optional=True,
        )
        for r in receipts
    ]


def receipt_from(name: str, item: Mapping[str, Any]) -> Receipt:
    return Receipt(
        name=name,
        digest=str(s(item, "digest")),
        checkpoint_ns=str(s(item, "ns", "")),
        checkpoint_id=str(s(item, "cid")),
        expires_at=float(n(item, "expires_at") or 0.0),
    )
