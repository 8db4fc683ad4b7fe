"""The audit log: one JSON line per erasure, expiry, archive and restore, never content.

Ids are written as keyed hashes (HMAC-SHA256 with `THREADLINE_AUDIT_KEY`, else a key derived
from `THREADLINE_AES_KEY`, else a random key kept beside the log), so the log can prove that a
given user's data was erased, when, and how much, without naming anyone to its readers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from threadline.settings import Settings

KEY_FILE_SUFFIX = ".key"


class AuditLog:
    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = path
        self._key = key or self._local_key()

    def _local_key(self) -> bytes:
        key_path = self.path.with_suffix(self.path.suffix + KEY_FILE_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not key_path.exists():
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        return bytes.fromhex(key_path.read_text().strip())

    def hashed(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:32]

    def record(
        self,
        action: str,
        *,
        tenant: str | None,
        user_id: str | None,
        thread_keys: list[str],
        receipt: str | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        line: dict[str, Any] = {
            "at": time.time(),
            "action": action,
            "tenant": tenant,
            "user": self.hashed(user_id) if user_id is not None else None,
            "threads": [self.hashed(key) for key in thread_keys],
            "count": len(thread_keys),
            "receipt_id": receipt,
            **(counts or {}),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


def audit_key(audit_key_setting: str | None, aes_key: str | None) -> bytes | None:
    """The key ids are hashed with: the audit key, else one derived from the AES key."""
    if audit_key_setting:
        return audit_key_setting.encode()
    if aes_key:
        return hmac.new(aes_key.encode(), b"threadline audit", hashlib.sha256).digest()
    return None


def open_audit_log(settings: Settings) -> AuditLog:
    """The deployment's audit log, keyed as `audit_key` says."""
    key = settings.audit_key.get_secret_value() if settings.audit_key else None
    aes = settings.encryption_secret
    return AuditLog(settings.audit_log_path, audit_key(key, aes))
