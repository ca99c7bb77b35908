"""Property-based requests generated from /openapi.json by schemathesis: whatever the input,
never a 5xx.

Bounded: EXAMPLES generated requests per operation, over every operation in the schema. Each
request carries an admin token, so the handlers themselves are exercised, not only the 401
path (the auth matrix in test_auth.py covers the token side)."""
from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from tests.service.specs import API, TINY

EXAMPLES = 30


def test_no_generated_request_causes_a_server_error(api_app, make_token):
    token = make_token("fuzz", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(api_app, headers=headers) as client:
        # One real experiment, so that generated ids sometimes meet an existing row.
        assert client.post(API, json=TINY).status_code == 201
        schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        tried: dict[str, int] = {}

        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                tried[label] = tried.get(label, 0) + 1
                response = case.call(headers=headers)
                assert response.status_code < 500, (label, case.formatted_path, response.text[:300])

            no_server_error()
    assert all(n >= 1 for n in tried.values()) and len(tried) == len(operations)
    print(f"schemathesis: {sum(tried.values())} cases over {len(tried)} operations")
