"""The three phases of grokking (Nanda et al. 2023) read off series whose answer is known."""
from __future__ import annotations

import math

import pytest

from service.science.phases import (
    PhaseThresholds,
    grokking_phases,
    phases_by_member,
    progress_summary,
    value_at,
)

STEPS = range(0, 10_001, 100)


def geometric(step: int, start: int, end: int, v0: float, v1: float) -> float:
    """v0 before start, v1 after end, geometric in between."""
    if step <= start:
        return v0
    if step >= end:
        return v1
    return v0 * (v1 / v0) ** ((step - start) / (end - start))


def paper_like_run() -> dict[str, list[tuple[int, float]]]:
    """A run shaped like Nanda et al.'s Fig. 7: it memorises by step 1000 (test loss rises),
    the excluded loss rises from 1500 to 6000 while the test loss stays flat and the weight norm
    drifts down, and from 6000 to 9000 the test loss and the weight norm fall together."""
    excluded = [
        (s, geometric(s, 0, 1000, 4.0, 0.5) if s <= 1500 else geometric(s, 1500, 6000, 0.5, 5.0))
        for s in range(0, 10_001, 500)
    ]
    test = [(s, geometric(s, 0, 1000, 4.0, 8.0) if s <= 6000 else geometric(s, 6000, 9000, 8.0, 0.02))
            for s in STEPS]
    norm = [(s, geometric(s, 1000, 6000, 40.0, 36.0) if s <= 6000 else geometric(s, 6000, 9000, 36.0, 15.0))
            for s in STEPS]
    train_acc = [(s, min(1.0, 0.01 + s / 1000)) for s in STEPS]
    return {"excluded_loss": excluded, "val_loss": test, "weight_norm": norm, "train_acc": train_acc}


def phases_of(run: dict, **thresholds) -> dict | None:
    return grokking_phases(
        run["excluded_loss"], run["val_loss"], run["weight_norm"], run.get("train_acc"),
        PhaseThresholds(**thresholds),
    )


def test_a_paper_like_run_has_its_three_phases_in_order():
    phases = phases_of(paper_like_run())
    assert phases["memorization"] == {"start_step": 0, "end_step": 1000}
    assert phases["circuit_formation"] == {"start_step": 1500, "end_step": 6000}
    assert phases["cleanup"] == {"start_step": 6000, "end_step": 9000}
    assert phases["thresholds"]["excluded_rise"] == 0.05


def test_without_weight_decay_the_circuit_forms_but_is_never_cleaned_up():
    run = paper_like_run()
    run["val_loss"] = [(s, geometric(s, 0, 1000, 4.0, 8.0)) for s in STEPS]  # stays high
    run["weight_norm"] = [(s, 40.0 + s / 1000) for s in STEPS]  # grows
    phases = phases_of(run)
    assert phases["circuit_formation"] == {"start_step": 1500, "end_step": 6000}
    assert phases["cleanup"] is None


def test_a_test_loss_that_falls_while_the_weights_grow_is_not_cleanup():
    run = paper_like_run()
    run["weight_norm"] = [(s, 40.0 + s / 100) for s in STEPS]
    phases = phases_of(run)
    assert phases["cleanup"] is None
    # with no cleanup, circuit formation ends where the excluded loss stops rising
    assert phases["circuit_formation"] == {"start_step": 1500, "end_step": 6000}


def test_an_excluded_loss_rising_while_the_test_loss_falls_is_not_circuit_formation():
    run = paper_like_run()
    run["val_loss"] = [(s, geometric(s, 1000, 9000, 8.0, 0.02)) for s in STEPS]
    phases = phases_of(run)
    assert phases["circuit_formation"] is None
    # the test loss and the (slowly shrinking) weight norm fall together from memorisation on
    assert phases["cleanup"] == {"start_step": 1000, "end_step": 9000}


def test_thresholds_move_the_boundaries():
    # a rise of 5% per 500 steps is not enough when 40% is asked for: ~29% per interval here
    assert phases_of(paper_like_run(), excluded_rise=0.4)["circuit_formation"] is None
    # a floor above the test loss at 8500 (0.054) ends cleanup there
    assert phases_of(paper_like_run(), test_loss_floor=0.06)["cleanup"] == {
        "start_step": 6000, "end_step": 8500}


def test_a_run_that_never_memorises_has_no_memorization_phase():
    run = paper_like_run()
    run["train_acc"] = [(s, 0.5) for s in STEPS]
    assert phases_of(run)["memorization"] is None


def test_phases_need_the_excluded_loss_the_test_loss_and_the_weight_norm():
    run = paper_like_run()
    for name in ("excluded_loss", "val_loss", "weight_norm"):
        assert phases_of({**run, name: []}) is None
        assert phases_of({**run, name: run[name][:1]}) is None
    nan_excluded = [(s, math.nan) for s, _ in run["excluded_loss"]]
    assert phases_of({**run, "excluded_loss": nan_excluded}) is None


def test_series_are_read_at_the_excluded_loss_steps_by_interpolation():
    points = [(0, 1.0), (100, 3.0), (300, 7.0)]
    assert value_at(points, 100) == 3.0
    assert value_at(points, 50) == 2.0
    assert value_at(points, 200) == 5.0
    assert value_at(points, 301) is None and value_at(points, -1) is None


def test_every_member_has_its_own_phases_and_member_0_is_on_top():
    run = paper_like_run()
    flat = {**run, "weight_norm": [(s, 40.0 + s / 1000) for s in STEPS]}
    phases = phases_by_member({0: run, 1: flat, 2: {"val_loss": run["val_loss"]}})
    assert [m["member"] for m in phases["members"]] == [0, 1]  # member 2 lacks the series
    assert phases["cleanup"] == phases["members"][0]["cleanup"] == {"start_step": 6000, "end_step": 9000}
    assert phases["members"][1]["cleanup"] is None
    assert phases_by_member({0: {"val_loss": run["val_loss"]}}) is None
    assert phases_by_member({}) is None


# Member 0 of a real ci-small run (seed 0, analysis every 50 steps), as the worker records it:
# it memorises by step 50 and grokks at 450. The excluded loss rises from step 50 to 450, but
# the test loss falls from step 50 on: ci-small forms its circuit and cleans up at once, so the
# rule sees no flat-test-loss circuit formation and one cleanup that ends as the test loss
# reaches 0.01 nats, at the generalisation step.
CI_SMALL_EXCLUDED = [(0, 3.926), (50, 1.131), (100, 1.836), (150, 2.321), (200, 2.836), (250, 3.64), (300, 4.541), (350, 5.7), (400, 6.094), (450, 6.196), (500, 6.122), (550, 5.861), (600, 5.645), (650, 5.451), (700, 5.439), (750, 5.443), (800, 5.443), (850, 5.441), (900, 5.413), (950, 5.357), (1000, 5.29), (1050, 5.222), (1100, 5.149), (1150, 5.093), (1200, 5.009)]  # noqa: E501
CI_SMALL_VAL_LOSS = [(0, 3.916), (1, 3.894), (2, 3.878), (4, 3.917), (8, 3.984), (16, 4.276), (32, 5.528), (50, 6.216), (100, 5.038), (150, 3.784), (200, 2.664), (250, 1.407), (300, 0.4883), (350, 0.1346), (400, 0.03795), (450, 0.00928), (500, 0.002108), (550, 0.0005092), (600, 0.0001737), (650, 7.381e-05), (700, 3.352e-05), (750, 1.682e-05), (800, 8.609e-06), (850, 4.719e-06), (900, 2.761e-06), (950, 1.8e-06), (1000, 1.188e-06), (1050, 8.715e-07), (1100, 7.173e-07), (1150, 5.649e-07), (1200, 4.554e-07)]  # noqa: E501
CI_SMALL_WEIGHT_NORM = [(0, 41.44), (1, 41.43), (2, 41.4), (4, 41.32), (8, 41.05), (16, 40.92), (32, 44.26), (50, 50.13), (100, 47.64), (150, 44.58), (200, 42.62), (250, 40.89), (300, 39.28), (350, 37.9), (400, 36.76), (450, 35.79), (500, 34.89), (550, 34.05), (600, 33.3), (650, 32.64), (700, 32.03), (750, 31.46), (800, 30.91), (850, 30.36), (900, 29.8), (950, 29.2), (1000, 28.6), (1050, 27.98), (1100, 27.38), (1150, 26.84), (1200, 26.51)]  # noqa: E501
CI_SMALL_TRAIN_ACC = [(0, 0.02717), (1, 0.02491), (2, 0.02717), (4, 0.03396), (8, 0.03623), (16, 0.1026), (32, 0.5472), (50, 1.0)] + [(s, 1.0) for s in range(100, 1201, 50)]  # noqa: E501


def test_a_recorded_ci_small_run():
    phases = grokking_phases(CI_SMALL_EXCLUDED, CI_SMALL_VAL_LOSS, CI_SMALL_WEIGHT_NORM, CI_SMALL_TRAIN_ACC)
    assert phases["memorization"] == {"start_step": 0, "end_step": 50}
    assert phases["circuit_formation"] is None
    assert phases["cleanup"] == {"start_step": 50, "end_step": 450}


@pytest.mark.parametrize("shift", [0, 7])
def test_steps_need_not_line_up(shift):
    """The test loss and weight norm are read between their own points."""
    run = paper_like_run()
    run["val_loss"] = [(s + shift, v) for s, v in run["val_loss"]]
    run["weight_norm"] = [(s + shift, v) for s, v in run["weight_norm"]]
    phases = phases_of(run)
    assert phases["circuit_formation"]["start_step"] == 1500
    assert phases["cleanup"]["start_step"] == 6000


# ---- the progress summary (Nanda et al.'s claims about one run) ------------------------------


def with_progress(run: dict) -> dict:
    """paper_like_run with a restricted loss that falls tenfold by 4000 (during circuit
    formation) and five key frequencies at the end."""
    restricted = [(s, geometric(s, 1000, 4000, 3.0, 0.1)) for s in range(0, 10_001, 500)]
    counts = [(s, 9.0 if s < 6000 else 5.0) for s in range(0, 10_001, 500)]
    return {**run, "restricted_loss": restricted, "key_freq_count": counts}


def test_the_progress_summary_of_a_paper_like_run():
    summary = progress_summary(with_progress(paper_like_run()))
    assert summary["circuit_formation_step"] == 1500 and summary["cleanup_step"] == 6000
    # From step 1000 (memorised): the restricted loss 3.0 -> <= 0.3 at its first point after
    # 3031; the test loss 8.0 -> <= 0.8 only during cleanup.
    assert summary["restricted_loss_fall_step"] == 3500
    assert 7000 <= summary["test_loss_fall_step"] <= 8000
    assert summary["excluded_loss_rise"] == pytest.approx(10.0)  # 0.5 -> 5.0
    assert summary["key_freq_count"] == 5


def test_the_progress_summary_without_cleanup_or_measures():
    run = with_progress(paper_like_run())
    run["val_loss"] = [(s, geometric(s, 0, 1000, 4.0, 8.0)) for s in STEPS]  # never falls
    summary = progress_summary(run)
    assert summary["cleanup_step"] is None and summary["test_loss_fall_step"] is None
    assert summary["restricted_loss_fall_step"] == 3500
    bare = progress_summary({"train_acc": run["train_acc"], "val_loss": run["val_loss"]})
    assert bare["circuit_formation_step"] is None and bare["key_freq_count"] is None
    assert bare["restricted_loss_fall_step"] is None and bare["excluded_loss_rise"] is None
