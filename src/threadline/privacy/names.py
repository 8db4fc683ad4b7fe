"""Thread names in storage: with encryption on, a thread's storage key and its tenant are keyed
hashes, so no Postgres column, SQLite row or Redis key name holds a tenant name or thread id.

The readable id is kept sealed in the thread's record (see `checkpointers.sealed_records`),
which is how listings show it. The hash key must outlive key rotation: it is
`THREADLINE_ID_KEY`, or one derived from a single `THREADLINE_AES_KEY` (a key ring needs the ID
key set explicitly).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

HASHED_PREFIX = "h."


def derived_id_key(aes_key: str) -> str:
    """The ID key a deployment with a single AES key gets unless `THREADLINE_ID_KEY` is set
    (hex, so it can be set as `THREADLINE_ID_KEY` before moving to a key ring)."""
    return hmac.new(aes_key.encode(), b"threadline thread ids", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ThreadNaming:
    """How a tenant-scoped thread key (`tenant/thread_id`) and a tenant are stored: as they are
    (`id_key` None), or as keyed hashes."""

    id_key: bytes | None = None

    @property
    def hashed(self) -> bool:
        return self.id_key is not None

    def stored_key(self, scoped_key: str) -> str:
        return self._hash("thread", scoped_key) if self.id_key else scoped_key

    def tenant_tag(self, tenant: str | None) -> str:
        """What records store as the tenant ("" in single-tenant mode)."""
        if not tenant:
            return ""
        return self._hash("tenant", tenant) if self.id_key else tenant

    def _hash(self, kind: str, value: str) -> str:
        assert self.id_key is not None
        digest = hmac.new(self.id_key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
        return HASHED_PREFIX + digest[:32]


CLEAR = ThreadNaming()

__all__ = ["CLEAR", "HASHED_PREFIX", "ThreadNaming", "derived_id_key"]
