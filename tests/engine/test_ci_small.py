"""The ci-small preset really groks on 2 CPU cores, and only because of weight decay.

Both runs are trained once per session (conftest.ci_small_runs).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def first_step(rows: list[dict], name: str, threshold: float = 0.99) -> int | None:
    return next((r["step"] for r in rows if r["name"] == name and r["value"] >= threshold), None)


def test_ci_small_memorises_long_before_it_generalises(ci_small_runs):
    run = ci_small_runs["grokking"]
    rows, member = run["rows"], run["summary"]["members"][0]
    memorised, generalised = first_step(rows, "train_acc"), first_step(rows, "val_acc")
    assert memorised is not None and generalised is not None
    assert generalised >= 5 * memorised
    assert (member["memorization_step"], member["generalization_step"]) == (memorised, generalised)
    # At memorisation the validation set is still mostly wrong.
    val_at_memorisation = next(r["value"] for r in rows if r["name"] == "val_acc" and r["step"] == memorised)
    assert val_at_memorisation < 0.7
    assert member["final"]["val_acc"] >= 0.99
    assert run["summary"]["stopped"] == "completed"


def test_ci_small_without_weight_decay_memorises_but_does_not_generalise(ci_small_runs):
    run = ci_small_runs["no_weight_decay"]
    rows, member = run["rows"], run["summary"]["members"][0]
    assert member["weight_decay"] == 0.0
    assert member["memorization_step"] is not None
    assert member["generalization_step"] is None
    assert max(r["value"] for r in rows if r["name"] == "val_acc") < 0.99
    assert run["summary"]["steps"] == ci_small_runs["grokking"]["summary"]["steps"]  # the same budget


def test_weight_decay_shrinks_the_weights_while_grokking(ci_small_runs):
    """Nanda et al. 2023: generalisation comes with a falling weight norm."""
    norm = lambda run: {r["step"]: r["value"] for r in run["rows"] if r["name"] == "weight_norm"}  # noqa: E731
    grok, free = norm(ci_small_runs["grokking"]), norm(ci_small_runs["no_weight_decay"])
    last = max(grok)
    assert grok[last] < 0.9 * free[last]
