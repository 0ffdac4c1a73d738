"""OpenAPI fuzzing (schemathesis) of the real API process on loopback, with a real broker behind
it: every operation in the document, valid and invalid inputs, and never a server error."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance

from tests.integration.conftest import Service, Stack

pytestmark = pytest.mark.integration

#: Examples per operation and generation mode: the whole run stays well under two minutes.
EXAMPLES = int(os.environ.get("FRAUD_TEST_FUZZ_EXAMPLES", "25"))


def test_no_operation_answers_a_server_error(stack: Stack) -> None:
    # No keys (FRAUD_AUTH_DISABLED=true, the stack's default) and no rate limit to hit: the fuzzer
    # is after the handlers, not the guard (tests/streaming/api/test_security.py covers that).
    stack.start_worker()  # creates the topics the API follows (rules, card changelog)
    env = {**stack.env(), "FRAUD_RATE_LIMIT_PER_SECOND": "100000", "FRAUD_RATE_LIMIT_BURST": "100000"}
    api = Service("api", env, stack.workdir / "api.log").start()
    stack.services.append(api.child)  # type: ignore[arg-type]  # started just above
    base = f"http://127.0.0.1:{stack.api_port}"
    api.wait_http(f"{base}/ready", timeout=120)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")

    calls: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call(base_url=base, timeout=15)
                calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
                # Server errors are the target. (Status conformance is left out: FastAPI answers an
                # unparsable JSON body with a 400 the OpenAPI document does not list.)
                case.validate_response(response, checks=[not_a_server_error, content_type_conformance])

            try:
                fuzz()
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body): no negative cases
            except (Exception, BaseExceptionGroup) as exc:  # collected: one report for every operation
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:800]}")

    print(f"schemathesis: {sum(calls.values())} calls over {len(calls)} operations")  # noqa: T201
    assert not failures, "\n".join(failures)
    assert len(calls) >= 8 and sum(calls.values()) >= 8 * EXAMPLES
    assert api.proc is not None and api.proc.poll() is None
