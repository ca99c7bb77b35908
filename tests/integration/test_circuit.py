"""The circuit of the grokked ci-small run, drawn through the whole stack: the worker computes
the pictures of its final checkpoint on request, and they show the Fourier circuit."""
from __future__ import annotations

import time

import pytest

from tests.analysis.test_circuit import angle_error

pytestmark = pytest.mark.integration

# Measured on the final ci-small checkpoint (p=47, step 1200; key frequencies 2, 3, 6, 22): the
# top clock (k=6) has a radius spread of 0.024, its residues lie within 0.073 rad of their
# angle 2 pi k r / p, and 0.564 of the neurons have more than 0.9 of their variance in one
# frequency. The bounds leave a margin for other hosts' floating point.
RADIUS_SPREAD_BOUND = 0.1
ANGLE_BOUND = 0.3  # radians
SHARE_ABOVE_0_9_BOUND = 0.4


def picture(stack, experiment_id: str, step: int, name: str, **params) -> dict:
    url = f"/api/v1/experiments/{experiment_id}/checkpoints/{step}/{name}"
    r = stack.client.get(url, params=params)
    deadline = time.monotonic() + 60
    while r.status_code == 202:
        assert time.monotonic() < deadline, f"{name} never finished"
        time.sleep(0.3)
        r = stack.client.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_grokked_run_draws_clocks_and_neurons_of_its_key_frequencies(stack, grokked_run):
    exp_id = grokked_run["id"]
    final = grokked_run["spec"]["training"]["steps"]
    p = grokked_run["spec"]["task"]["p"]
    embedding = picture(stack, exp_id, final, "embedding")
    neurons = picture(stack, exp_id, final, "neurons")
    keys = embedding["key_frequencies"]
    assert 1 <= len(keys) <= 8 and keys == neurons["key_frequencies"]

    clock = embedding["clocks"][0]
    error = angle_error(clock["points"], clock["frequency"], p)
    print(f"\nci-small step {final}: key frequencies {keys}; top clock k={clock['frequency']} "
          f"(share {clock['share']:.3f}) radius spread {clock['radius_spread']:.4f}, "
          f"angle error {error:.4f} rad; share of neurons > 0.9: {neurons['share_above_0_9']:.3f}")
    assert clock["radius_spread"] < RADIUS_SPREAD_BOUND
    assert error < ANGLE_BOUND  # the residues go round the clock in order
    assert neurons["share_above_0_9"] > SHARE_ABOVE_0_9_BOUND
    explained = [n for n in neurons["neurons"] if n["fraction"] > 0.9]
    assert {n["frequency"] for n in explained} <= set(keys)

    waves = picture(stack, exp_id, final, "waves")
    assert {n["frequency"] for n in waves["neurons"]} <= set(keys)
    assert len({n["frequency"] for n in waves["neurons"]}) == len(waves["neurons"]) >= 1
    # the logit of answer 0 is largest on the pairs with a + b = 0 mod p: the model is right
    logit = waves["logit"]["values"]
    for a in range(p):
        row = logit[a]
        assert row.index(max(row)) == (-a) % p

    heads = picture(stack, exp_id, final, "attention")["heads"]
    model = grokked_run["spec"]["model"]
    assert len(heads) == model["n_layers"] * model["n_heads"]
    assert all(len(h["to_a"]) == p and len(h["to_b"][0]) == p for h in heads)
