"""Thread identity: what a valid `thread_id` is, and where requests carry it."""

from __future__ import annotations

import re

from fastapi import HTTPException

THREAD_HEADER = "X-Thread-Id"
THREAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def validate_thread_id(thread_id: object) -> str:
    """The thread_id itself, or a 422 that says what a valid one looks like."""
    if not isinstance(thread_id, str) or not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise HTTPException(
            422, "thread_id must be 1-128 characters of letters, digits and . _ : @ -"
        )
    return thread_id
