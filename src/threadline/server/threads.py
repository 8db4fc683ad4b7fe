"""Thread identity: what a valid `thread_id` is, where requests carry it, how tenants scope it.

The stored key is `<tenant>/<thread_id>` with auth on and the bare `thread_id` without. `/` is
outside both the thread_id and the tenant alphabet, so no user-visible thread_id can name another
tenant's key, and a single-tenant key can never look like a scoped one.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException, Path

from threadline.privacy.names import CLEAR, ThreadNaming

THREAD_HEADER = "X-Thread-Id"
USER_HEADER = "X-User-Id"
# Run-config keys the server sets (LangGraph keeps "__"-prefixed keys out of checkpoint metadata).
TENANT_CONFIG_KEY = "__threadline_tenant"  # as records store it (see `ThreadNaming`)
THREAD_ID_CONFIG_KEY = "__threadline_thread_id"  # what the client calls the thread
USER_CONFIG_KEY = "__threadline_user_id"
THREAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
TENANT_PATTERN = THREAD_ID_PATTERN
TENANT_SEPARATOR = "/"
THREAD_ID_RULE = "thread_id must be 1-128 characters of letters, digits and . _ : @ -"
USER_ID_RULE = "user_id must be 1-128 characters of letters, digits and . _ : @ -"


def validate_thread_id(thread_id: object) -> str:
    """The thread_id itself, or a 422 that says what a valid one looks like."""
    if not isinstance(thread_id, str) or not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise HTTPException(422, THREAD_ID_RULE)
    return thread_id


def validate_user_id(user_id: object) -> str:
    """The user_id itself (same alphabet as thread ids), or a 422."""
    if not isinstance(user_id, str) or not THREAD_ID_PATTERN.fullmatch(user_id):
        raise HTTPException(422, USER_ID_RULE)
    return user_id


def one_of(name: str, from_config: object, from_header: str | None, header: str) -> object:
    """The value a request gives in its config or its header; 422 if the two disagree."""
    if from_config is not None and from_header is not None and from_config != from_header:
        raise HTTPException(
            422, f"config.configurable.{name} and the {header} header name different values"
        )
    return from_config if from_config is not None else from_header


def scoped_thread_key(tenant: str | None, thread_id: str, naming: ThreadNaming = CLEAR) -> str:
    """The checkpointer's thread_id for a tenant's thread (the bare id in single-tenant mode),
    as `naming` stores it (a keyed hash with encryption on)."""
    thread_id = validate_thread_id(thread_id)
    scoped = thread_id if tenant is None else f"{tenant}{TENANT_SEPARATOR}{thread_id}"
    return naming.stored_key(scoped)


def visible_thread_id(thread_key: str) -> str:
    """The thread_id a client knows for a stored key."""
    return thread_key.rpartition(TENANT_SEPARATOR)[2]


def id_in_path() -> Any:
    """A thread or user id as a path parameter (both have the same alphabet)."""
    return Path(
        min_length=1,
        max_length=128,
        pattern=THREAD_ID_PATTERN.pattern,
        description="1-128 characters of letters, digits and . _ : @ -",
    )
