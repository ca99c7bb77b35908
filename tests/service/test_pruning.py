"""The pruning rule and the forecast (service/science/pruning.py) on synthetic series shaped like
the two fates of a run after memorisation: grokking (weight norm and val loss fall long before
val accuracy rises) and staying memorised (no weight decay: the norm grows, val loss with it)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.science.pruning import (
    EarlyStoppingSpec,
    early_stopping_problem,
    forecast,
    is_check_step,
    kept_by_rank,
    replay,
)
from service.science.sweeps import SweepInvalid, SweepSpec, expand

STEPS = list(range(0, 1201, 50))


def run(*, groks_at: int | None, norm_trend: float, val_loss_trend: float, memorizes_at: int = 100) -> dict:
    """Series of a run that memorises at `memorizes_at`; after it the weight norm changes by
    norm_trend and val loss by val_loss_trend per 100 steps (relative), and val accuracy jumps
    to 1 over the 150 steps before groks_at (never, when None)."""
    series: dict[str, list] = {"train_acc": [], "val_acc": [], "val_loss": [], "weight_norm": []}
    for s in STEPS:
        after = max(0, s - memorizes_at) / 100
        series["train_acc"].append((s, 1.0 if s >= memorizes_at else s / memorizes_at * 0.9))
        series["weight_norm"].append((s, 30.0 * (1 + norm_trend) ** after))
        series["val_loss"].append((s, 6.0 * (1 + val_loss_trend) ** after))
        if groks_at is not None and s >= groks_at - 150:
            val = min(1.0, 0.05 + 0.95 * (s - (groks_at - 150)) / 150)
        else:
            val = 0.05
        series["val_acc"].append((s, val))
    return series


GROKKER = run(groks_at=700, norm_trend=-0.06, val_loss_trend=-0.1)
MEMORIZER = run(groks_at=None, norm_trend=0.02, val_loss_trend=0.05)


def test_no_forecast_before_memorisation():
    assert forecast(GROKKER, step=50) is None


def test_the_grokker_is_told_apart_from_the_memoriser_long_before_its_val_accuracy_rises():
    ahead = forecast(GROKKER, step=300)  # val acc still 0.05 until step 550
    behind = forecast(MEMORIZER, step=300)
    assert ahead["will_generalize"] > 0.9 > 0.1 > behind["will_generalize"]
    assert ahead["signals"]["weight_norm_drop"] == pytest.approx(1 - 0.94 ** 2, abs=1e-3)
    assert behind["signals"]["weight_norm_drop"] == 0
    assert ahead["memorization_step"] == 100 and ahead["generalization_step"] is None


def test_generalization_step_is_extrapolated_while_val_accuracy_rises_then_measured():
    rising = forecast(GROKKER, step=600)  # halfway up: 0.05 at 550 ... 1.0 at 700
    assert rising["generalization_step"] == pytest.approx(700, abs=25)
    done = forecast(GROKKER, step=1200)
    assert done["generalization_step"] == 700 and done["will_generalize"] == 1.0


def test_grokking_aware_prunes_the_memoriser_and_keeps_the_grokker():
    es = EarlyStoppingSpec(policy="grokking_aware", check_every=100)
    fates = replay(es, [GROKKER, MEMORIZER], budget=1200)
    assert fates[0]["pruned_at"] is None
    assert fates[1]["pruned_at"] == 200  # the first check after memorisation at 100
    assert fates[1]["score"] < 0.5 and "will_generalize" in fates[1]["reason"]


def test_asha_on_val_acc_cannot_tell_them_apart_before_the_grokker_turns():
    es = EarlyStoppingSpec(policy="asha", metric="val_acc", check_every=100)
    assert es.keep_fraction == 0.5
    # Equal val accuracy until step 550: a tie keeps both; the memoriser goes once the grokker
    # has turned. With the grokker a little worse at memorisation, ASHA would prune it.
    fates = replay(es, [GROKKER, MEMORIZER], budget=1200)
    assert fates[0]["pruned_at"] is None and fates[1]["pruned_at"] == 600
    unlucky = {**GROKKER, "val_acc": [(s, v - 0.01 if s < 550 else v) for s, v in GROKKER["val_acc"]]}
    fates = replay(es, [unlucky, MEMORIZER], budget=1200)
    assert fates[0]["pruned_at"] == 200


def test_keep_fraction_bounds_what_grokking_aware_prunes_at_a_check():
    es = EarlyStoppingSpec(policy="grokking_aware", check_every=100, keep_fraction=0.5)
    fates = replay(es, [MEMORIZER, MEMORIZER], budget=1200)  # equal scores keep each other
    assert [f["pruned_at"] for f in fates] == [None, None]
    less_sure = run(groks_at=None, norm_trend=-0.004, val_loss_trend=0.05)  # a little norm lost
    fates = replay(es, [MEMORIZER, less_sure, GROKKER], budget=1200)
    # 2 of 3 kept at the first check: the grokker and the one more likely to generalise; 1 of
    # those 2 at the next
    assert [f["pruned_at"] for f in fates] == [200, 300, None]


def test_kept_by_rank():
    assert kept_by_rank(0.9, [0.1, 0.5, 0.7], 0.5, higher_is_better=True)
    assert not kept_by_rank(0.5, [0.1, 0.9, 0.7], 0.5, higher_is_better=True)
    assert kept_by_rank(0.2, [0.1, 0.9, 0.7], 0.5, higher_is_better=False)  # a loss
    assert kept_by_rank(0.0, [], 0.1, higher_is_better=True)  # alone: kept


def test_check_steps():
    es = EarlyStoppingSpec(policy="grokking_aware", check_every=100)
    assert not is_check_step(es, 200, None)  # not memorised yet
    assert not is_check_step(es, 100, 100) and is_check_step(es, 200, 100)
    assert not is_check_step(es, 250, 100)
    fixed = EarlyStoppingSpec(policy="asha", after=300, check_every=100)
    assert [s for s in STEPS if is_check_step(fixed, s, None)] == list(range(400, 1201, 100))


def test_bad_early_stopping_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="policy"):
        EarlyStoppingSpec(policy="hyperband")
    with pytest.raises(ValidationError, match="after"):
        EarlyStoppingSpec(policy="asha", after=-5)
    assert "multiple of training.eval_every (50)" in early_stopping_problem(
        EarlyStoppingSpec(policy="asha", check_every=75), 50, 1200)
    sweep = SweepSpec.model_validate({
        "base": {"preset": "ci-small"}, "grid": {"training.seed": [0, 1]},
        "early_stopping": {"policy": "grokking_aware", "check_every": 75},
    })
    with pytest.raises(SweepInvalid) as caught:
        expand(sweep, None, 100)
    assert caught.value.errors[0]["loc"] == ["body", "early_stopping"]


def test_the_phase_diagram_counts_pruned_members_as_pruned():
    from service.science.phase_diagram import MemberResult, phase_diagram

    grid = {"optimizer.weight_decay": [0, 1]}
    members = [
        MemberResult({"optimizer.weight_decay": 0}, "pruned",
                     {"phase": "memorization", "grokked": False, "pruning": {"step": 200}}),
        MemberResult({"optimizer.weight_decay": 0}, "succeeded", {"phase": "memorization", "grokked": False}),
        MemberResult({"optimizer.weight_decay": 1}, "succeeded", {"phase": "grokking", "grokked": True}),
    ]
    cells = {c["x"]: c for c in phase_diagram(grid, members, "optimizer.weight_decay")["cells"]}
    assert cells[0]["phases"]["pruned"] == 1 and cells[0]["phases"]["memorization"] == 1
    assert cells[0]["finished"] == 2 and cells[0]["grokked_fraction"] == 0
    assert cells[1]["phases"].get("pruned", 0) == 0 and cells[1]["grokked_fraction"] == 1


def test_with_weight_decay_a_stalled_run_goes_after_the_patience_and_a_slow_one_stays():
    stalled = run(groks_at=None, norm_trend=-0.02, val_loss_trend=0.02)  # val loss creeping up
    slow = run(groks_at=None, norm_trend=-0.02, val_loss_trend=-0.03)  # still falling, slowly
    es = EarlyStoppingSpec(policy="grokking_aware", check_every=100)
    fates = replay(es, [stalled, slow], budget=1200)
    assert fates[0]["pruned_at"] == 500  # 400 steps after memorisation: past the patience (350)
    assert "val_loss_fall -0.040" in fates[0]["reason"]  # 1 - 1.02 ** 2
    assert fates[1]["pruned_at"] is None
    assert forecast(slow, 1200)["signals"]["val_loss_fall"] == pytest.approx(1 - 0.97 ** 2, abs=1e-3)


def test_grokking_aware_needs_a_modular_task():
    es = EarlyStoppingSpec(policy="grokking_aware")
    assert "use policy 'asha'" in early_stopping_problem(es, 50, 1200, "permutation")
    assert early_stopping_problem(EarlyStoppingSpec(policy="asha"), 50, 1200, "permutation") is None
