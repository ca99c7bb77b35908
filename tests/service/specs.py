"""Specs for the service tests."""
from __future__ import annotations

from service.contract.spec import ExperimentSpec, spec_from_preset


def small_spec(**overrides) -> ExperimentSpec:
    """ci-small with a tiny model: cheap to validate, realistic in shape."""
    return spec_from_preset(
        "ci-small",
        **{"model": {"d_model": 16, "n_heads": 2, "d_mlp": 32}, **overrides},
    )


API = "/api/v1/experiments"
# A submit body: ci-small with a tiny model and 60 steps.
TINY = {
    "name": "tiny",
    "preset": "ci-small",
    "model": {"d_model": 16, "n_heads": 2, "d_mlp": 32},
    "training": {"steps": 60},
}
