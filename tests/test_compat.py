"""The private upstream names threadline relies on still exist and still behave as used.

An upgrade of langgraph, langgraph-checkpoint-postgres or langchain-openai that moves one
fails here, by name."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage

from threadline import compat


def test_langgraph_internals_threadline_uses() -> None:
    assert compat.NS_SEP == "|"
    assert compat.MISSING is not None and compat.MISSING != []
    snapshot = compat.DeltaSnapshot([1, 2])
    assert snapshot.value == [1, 2]
    runnable = compat.RunnableCallable(lambda x: x + 1)
    assert runnable.invoke(1) == 2


def test_checkpoint_postgres_garbage_blobs() -> None:
    freed = [{"channel": "a", "version": "1"}, {"channel": "a", "version": "2"}]
    still_referenced = [{"channel": "a", "version": "2"}]
    assert compat.garbage_blobs(freed, still_referenced) == {"a": ["1"]}


def test_langchain_openai_wire_converters() -> None:
    from_v1, to_wire = compat.openai_wire_converters()
    assert to_wire(HumanMessage("hi")) == {"content": "hi", "role": "user"}
    assert to_wire(from_v1(AIMessage("ok")))["role"] == "assistant"


def test_pool_retry_delays_are_capped() -> None:
    import psycopg_pool.pool_async

    compat.cap_pool_retry_delays()
    attempt = psycopg_pool.pool_async.AttemptWithBackoff(timeout=300)
    delays = []
    for now in range(12):
        attempt.update_delay(float(now))
        delays.append(attempt.delay)
    assert delays[0] <= 0.11
    assert max(delays) == 1.0
