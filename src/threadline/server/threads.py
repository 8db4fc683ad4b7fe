"""Thread identity: what a valid `thread_id` is, where requests carry it, how tenants scope it.

The stored key is `<tenant>/<thread_id>` with auth on and the bare `thread_id` without. `/` is
outside both the thread_id and the tenant alphabet, so no user-visible thread_id can name another
tenant's key, and a single-tenant key can never look like a scoped one.
"""

from __future__ import annotations

import re

from fastapi import HTTPException

THREAD_HEADER = "X-Thread-Id"
THREAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
TENANT_PATTERN = THREAD_ID_PATTERN
TENANT_SEPARATOR = "/"
THREAD_ID_RULE = "thread_id must be 1-128 characters of letters, digits and . _ : @ -"


def validate_thread_id(thread_id: object) -> str:
    """The thread_id itself, or a 422 that says what a valid one looks like."""
    if not isinstance(thread_id, str) or not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise HTTPException(422, THREAD_ID_RULE)
    return thread_id


def scoped_thread_key(tenant: str | None, thread_id: str) -> str:
    """The checkpointer's thread_id for a tenant's thread (the bare id in single-tenant mode)."""
    thread_id = validate_thread_id(thread_id)
    return thread_id if tenant is None else f"{tenant}{TENANT_SEPARATOR}{thread_id}"


def visible_thread_id(thread_key: str) -> str:
    """The thread_id a client knows for a stored key."""
    return thread_key.rpartition(TENANT_SEPARATOR)[2]
