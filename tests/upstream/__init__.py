"""LangGraph's own test suites, run against threadline's checkpoint savers.

The installed ``langgraph`` and ``langgraph-checkpoint-postgres`` ship their tests in their
source distributions. ``sdist.py`` downloads the sdist of the *installed* version (cached in
``.threadline/upstream/``), ``harness.py`` runs the selected suites in a child pytest inside
it, and ``threadline_upstream_plugin.py`` (loaded there with ``-p``) replaces the async
checkpointer the suites build with one of:

- ``stock``: langgraph's AsyncPostgresSaver (the comparison baseline);
- ``durable``: threadline's DurablePostgresSaver;
- ``tiered``: threadline's TieredSaver (Redis hot tier + Postgres).

Test bodies are untouched; only async-checkpointer parametrizations run (our savers are
async-first: their sync methods raise on the event loop, so sync-only tests do not apply).

Run by hand (starts throwaway Postgres/Redis unless THREADLINE_TEST_POSTGRES_URL and
THREADLINE_TEST_PLAIN_REDIS_URL are set)::

    .venv/bin/python -m tests.upstream --saver stock
    .venv/bin/python -m tests.upstream --saver tiered --suite 'test_delta_channel_*' -k fork

In the test run: ``tests/test_upstream_suites.py`` (durable and tiered), which fails on any
failure outside its NOT_APPLICABLE list. Needs network to the package registry on first run.
"""
