"""API keys and tenants: who is calling, and therefore whose threads they can reach.

`THREADLINE_API_KEYS=key1:tenant1,key2:tenant2` turns auth on. A key arrives as
`Authorization: Bearer <key>`, or as the password of HTTP Basic auth so that a browser (the chat
playground) can log in with its own prompt. Without keys the server is single-tenant.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr

from threadline.settings import SettingsError

log = logging.getLogger("threadline.server")

TENANT_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
BASIC_REALM = 'Basic realm="threadline", charset="UTF-8"'


@dataclass(frozen=True)
class ApiKeys:
    """Key → tenant. Keys are compared in constant time and never logged."""

    tenants: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, setting: SecretStr | None) -> ApiKeys | None:
        """The configured keys, or None for single-tenant mode; a malformed list fails start-up."""
        if setting is None or not setting.get_secret_value().strip():
            return None
        pairs: list[tuple[bytes, str]] = []
        for number, entry in enumerate(setting.get_secret_value().split(","), 1):
            key, sep, tenant = entry.strip().rpartition(":")
            if not sep or not key or not TENANT_NAME.fullmatch(tenant):
                raise SettingsError(
                    f"THREADLINE_API_KEYS entry {number} must be `key:tenant` with a tenant of "
                    "1-64 letters, digits and . _ @ -"
                )
            pairs.append((key.encode(), tenant))
        return cls(tuple(pairs))

    def tenant_for(self, key: str) -> str | None:
        """The key's tenant, or None; every configured key is compared, matching or not."""
        found = None
        candidate = key.encode()
        for known, tenant in self.tenants:
            if hmac.compare_digest(known, candidate):
                found = tenant
        return found


def presented_key(authorization: str | None) -> str | None:
    """The key from `Bearer <key>` or from Basic auth's password; None if neither."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def authenticate(request: Request, *, browser: bool = False) -> str | None:
    """The caller's tenant (None in single-tenant mode), or a 401.

    `browser` asks for Basic credentials so a person at the playground gets the login prompt.
    """
    keys: ApiKeys | None = request.app.state.api_keys
    if keys is None:
        return None
    key = presented_key(request.headers.get("authorization"))
    tenant = keys.tenant_for(key) if key else None
    if tenant is None:
        challenge = BASIC_REALM if browser else 'Bearer realm="threadline"'
        raise HTTPException(
            401,
            "missing or unknown API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": challenge},
        )
    request.state.tenant = tenant
    return tenant


async def require_tenant(request: Request) -> str | None:
    """Dependency form of `authenticate` for API routes."""
    return authenticate(request)


def warn_if_open(keys: ApiKeys | None) -> None:
    if keys is None:
        log.warning(
            "THREADLINE_API_KEYS is not set: single-tenant mode, every caller reaches every thread"
        )


Tenant = Annotated[str | None, Depends(require_tenant)]  # a route's caller's tenant
