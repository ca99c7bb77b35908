"""grokking_summary on accuracy curves whose phase is known."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.science.grokking import GrokkingThresholds, grokking_summary


def curve(points: dict[int, float]) -> list[tuple[int, float]]:
    return list(points.items())


# Nanda et al.'s mainline run, coarsely: train fits by 1400, val follows near 9400.
GROK_TRAIN = curve({0: 0.01, 500: 0.6, 1000: 0.96, 1400: 0.995, 5000: 1.0, 10000: 1.0, 20000: 1.0})
GROK_VAL = curve({0: 0.01, 500: 0.02, 1000: 0.03, 1400: 0.05, 5000: 0.3, 9000: 0.97, 9400: 0.992, 20000: 1.0})


def test_classic_grokking_run():
    summary = grokking_summary(GROK_TRAIN, GROK_VAL)
    assert summary["phase"] == "grokking"
    assert summary["grokked"] is True
    assert summary["memorization_step"] == 1400
    assert summary["memorization_step_95"] == 1000
    assert summary["generalization_step"] == 9400
    assert summary["generalization_step_95"] == 9000
    assert summary["grokking_delay"] == pytest.approx(9400 / 1400)
    assert summary["last_step"] == 20000
    assert summary["final_train_acc"] == 1.0 and summary["final_val_acc"] == 1.0


def test_run_that_never_generalises_is_memorization():
    val = curve({0: 0.01, 1000: 0.05, 20000: 0.2})
    summary = grokking_summary(GROK_TRAIN, val)
    assert summary["phase"] == "memorization"
    assert summary["grokked"] is False
    assert summary["generalization_step"] is None
    assert summary["grokking_delay"] is None
    assert summary["memorization_step"] == 1400


def test_run_that_generalises_at_once_is_comprehension():
    train = curve({0: 0.01, 100: 0.5, 200: 0.99, 300: 1.0})
    val = curve({0: 0.01, 100: 0.4, 200: 0.9, 300: 0.995})
    summary = grokking_summary(train, val)
    assert summary["phase"] == "comprehension"
    assert summary["grokked"] is True
    assert summary["grokking_delay"] == pytest.approx(1.5)


def test_run_that_never_fits_is_confusion():
    train = curve({0: 0.01, 1000: 0.5, 5000: 0.9})
    val = curve({0: 0.01, 1000: 0.02, 5000: 0.03})
    summary = grokking_summary(train, val)
    assert summary["phase"] == "confusion"
    assert summary["memorization_step"] is None
    assert summary["memorization_step_95"] is None
    assert summary["grokked"] is False


def test_unsorted_series_with_gaps_and_missing_values():
    train = list(reversed(GROK_TRAIN)) + [(700, None), (800, float("nan"))]
    val = [point for point in GROK_VAL if point[0] != 5000][::-1]
    summary = grokking_summary(train, val)
    assert summary["memorization_step"] == 1400
    assert summary["generalization_step"] == 9400
    assert summary["phase"] == "grokking"
    assert summary["final_val_acc"] == 1.0  # the value at the last step, not the last listed


def test_series_as_json_lists():
    summary = grokking_summary([[0, 0.1], [100, 1.0]], [[0, 0.1], [100, 1.0]])
    assert summary["memorization_step"] == 100 and summary["phase"] == "comprehension"


def test_empty_series():
    summary = grokking_summary([], [])
    assert summary["phase"] == "confusion"
    assert summary["grokked"] is False
    assert summary["last_step"] is None
    assert summary["final_train_acc"] is None and summary["final_val_acc"] is None
    json.dumps(summary)


def test_fit_at_step_zero_has_no_delay():
    summary = grokking_summary([(0, 1.0), (100, 1.0)], [(0, 0.5), (100, 1.0)])
    assert summary["memorization_step"] == 0
    assert summary["grokking_delay"] is None
    assert summary["phase"] == "grokking"  # 100 steps after a fit at step "1"
    assert grokking_summary([(0, 1.0)], [(0, 1.0)])["phase"] == "comprehension"


def test_thresholds_are_overridable():
    # at 0.9 the same run fits at 1000 and generalises at 9000
    loose = grokking_summary(GROK_TRAIN, GROK_VAL, GrokkingThresholds(acc_threshold=0.9))
    assert loose["memorization_step"] == 1000
    assert loose["generalization_step"] == 9000
    assert loose["thresholds"]["acc_threshold"] == 0.9
    # a tolerant delay calls the same run comprehension
    tolerant = grokking_summary(GROK_TRAIN, GROK_VAL, GrokkingThresholds(delay_threshold=10))
    assert tolerant["phase"] == "comprehension"


@pytest.mark.parametrize(
    "kwargs, field",
    [({"acc_threshold": 1.5}, "acc_threshold"), ({"acc_threshold_95": 0}, "acc_threshold_95"),
     ({"delay_threshold": 0.5}, "delay_threshold")],
)
def test_bad_thresholds_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GrokkingThresholds(**kwargs)


def test_summary_is_json_serialisable():
    assert json.loads(json.dumps(grokking_summary(GROK_TRAIN, GROK_VAL)))["phase"] == "grokking"


REPO_ROOT = Path(__file__).resolve().parents[2]


def imports_of(module: str) -> list[str]:
    """The heavy packages that importing `module` in a fresh interpreter pulls in."""
    code = (
        f"import sys, {module}; "
        "print(','.join(m for m in ('torch', 'sqlalchemy', 'celery', 'fastapi') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_grokking_summary_imports_without_torch():
    """The torch-free API server imports service.science.grokking."""
    assert imports_of("service.science.grokking") == []


def test_fourier_needs_only_torch():
    assert imports_of("worker.analysis.fourier") == ["torch"]
