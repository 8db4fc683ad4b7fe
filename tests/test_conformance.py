"""langgraph-checkpoint-conformance against the tiered saver and the durable saver alone."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate

from tests.fixtures.checkpointers import CONFORMANCE_REPORTS
from threadline.checkpointers.serde import make_serializer

AES_KEY = "conformance-key-0123456789abcdef"[:32]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("kind", ["TieredSaver", "DurablePostgresSaver"])
async def test_conformance_is_full(kind, encrypted, open_tiered, open_durable):
    serde = make_serializer(AES_KEY if encrypted else None)
    name = f"{kind}{' (AES)' if encrypted else ''}"

    @checkpointer_test(name=name)
    async def factory():
        opener = open_tiered if kind == "TieredSaver" else open_durable
        async with opener(serde=serde) as saver:
            yield saver

    report = await validate(factory)
    counts = [(r.tests_passed, r.tests_passed + r.tests_failed) for r in report.results.values()]
    passed, total = sum(p for p, _ in counts), sum(t for _, t in counts)
    detected = sum(r.detected for r in report.results.values())
    CONFORMANCE_REPORTS.append(
        f"{name}: {report.conformance_level()} ({detected}/8 capabilities, "
        f"{passed}/{total} tests passed)"
    )
    failures = [f for r in report.results.values() for f in r.failures]
    assert report.conformance_level() == "FULL", failures
    assert detected == 8
