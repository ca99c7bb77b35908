"""Submit bodies for the service tests, from the one test builder (tests/builders.py)."""
from __future__ import annotations

from tests.builders import tiny_body

API = "/api/v1/experiments"
# A submit body: ci-small with a tiny model and 60 steps.
TINY = tiny_body("tiny", training={"steps": 60})
