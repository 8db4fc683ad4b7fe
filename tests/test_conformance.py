"""langgraph-checkpoint-conformance against the tiered saver and the durable saver alone."""

from __future__ import annotations

import pytest

from tests.fixtures.checkpointers import assert_fully_conformant
from threadline.checkpointers.serde import make_serializer

AES_KEY = "conformance-key-0123456789abcdef"[:32]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("kind", ["TieredSaver", "DurablePostgresSaver"])
async def test_conformance_is_full(kind, encrypted, open_tiered, open_durable):
    serde = make_serializer(AES_KEY if encrypted else None)
    opener = open_tiered if kind == "TieredSaver" else open_durable
    await assert_fully_conformant(
        f"{kind}{' (AES)' if encrypted else ''}", lambda: opener(serde=serde)
    )
