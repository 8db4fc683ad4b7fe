"""schemathesis against /openapi.json: no generated request gets a 500, and every answer is
what the document says (status codes, content types, body schemas, headers).

The app is served in this process by uvicorn in a thread: schemathesis' own ASGI transport
would run the app's lifespan (open the store, set it up, close it) around every request. Valid
and invalid requests are generated for every operation. A stream that has started cannot change
its status any more, so stream bodies are checked for LangServe's error event as well.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.server import live_server, settings_for

EXAMPLES = 15
# LangServe's run bodies embed every message schema; generating one costs about a second.
EXAMPLES_OF_RUN_BODIES = 3
HEADERS = {"Authorization": "Bearer fuzz-key", "X-Thread-Id": "fuzz"}
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SERVER_ERROR_EVENT = '"status_code": 500'


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    app_settings = settings_for(
        model="fake",
        checkpointer="sqlite",
        sqlite_path=tmp_path / "threads.sqlite",
        api_keys="fuzz-key:fuzz",
        max_message_chars=2000,
        max_messages_per_request=8,
    )
    with live_server(app_settings) as base_url:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=HEADERS)
        failures = fuzz(schema, base_url)
    assert not failures, "\n".join(failures[:10])


def fuzz(schema: BaseSchema, base_url: str) -> list[str]:
    """Every operation with valid and invalid input; returns the requests that got a 500."""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: list[str] = []
    for operation in operations:
        runs_a_turn = operation.method.upper() == "POST"
        examples = EXAMPLES_OF_RUN_BODIES if runs_a_turn else EXAMPLES
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, headers=HEADERS, timeout=30)
                if response.status_code >= 500 or SERVER_ERROR_EVENT in response.text:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{case.body!r:.300} -> {response.text[:300]}"
                    )
                try:
                    case.validate_response(response, checks=CONFORMANCE)
                except FailureGroup as group:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} does not "
                        f"match the document: {str(group)[:400]}"
                    )

            try:
                call()
            except Unsatisfiable:  # nothing to make invalid: no parameters and no body
                assert mode is GenerationMode.NEGATIVE
    return failures
