"""Progress measures with the key frequencies fixed (as Nanda et al. 2023 compute them), on the
hand-built Fourier model whose frequencies are known."""
from __future__ import annotations

import json
import math

import pytest

from tests.analysis.test_fourier import FREQS, OTHER_FREQS, P, HandBuiltFourierModel, random_train_mask
from worker.analysis.fixed_keys import (
    FIXED_KEY_MEASURES,
    key_frequencies_of,
    measure_series,
    measures_with_fixed_key_freqs,
)
from worker.analysis.grid import progress_measures_all


@pytest.fixture(scope="module")
def two_members():
    return HandBuiltFourierModel(P, [FREQS, OTHER_FREQS])


def test_key_frequencies_of_each_member_are_the_ones_it_computes(two_members):
    assert key_frequencies_of(two_members, P, 2) == [list(FREQS), list(OTHER_FREQS)]


def test_the_right_fixed_frequencies_keep_the_circuit(two_members):
    mask = random_train_mask(P)
    fixed = measures_with_fixed_key_freqs(two_members, P, "x+y", mask, [list(FREQS), list(OTHER_FREQS)])
    found = progress_measures_all(two_members, P, "x+y", mask, 2)
    # fixing the frequencies a model uses gives what finding them gives
    for name in FIXED_KEY_MEASURES:
        assert [m[name] for m in fixed] == pytest.approx([m[name] for m in found]), name
    assert fixed[0]["restricted_loss"] == pytest.approx(fixed[0]["full_loss"], abs=1e-4)
    assert fixed[0]["excluded_loss"] == pytest.approx(math.log(P), abs=0.05)
    assert fixed[1]["key_frequencies"] == list(OTHER_FREQS)


def test_fixed_frequencies_are_used_even_when_the_model_computes_others(two_members):
    """The measures follow the given frequencies, not the neurons: with frequencies the model
    does not use, nothing is restricted to (chance) and nothing is excluded (the full loss)."""
    mask = random_train_mask(P)
    swapped = measures_with_fixed_key_freqs(two_members, P, "x+y", mask, [list(OTHER_FREQS), list(FREQS)])
    first = swapped[0]
    assert first["key_frequencies"] == list(OTHER_FREQS)
    assert first["key_freq_count"] == 3
    assert first["restricted_loss"] == pytest.approx(math.log(P), abs=0.05)
    assert first["excluded_loss"] < 1e-3  # the circuit is all still there
    assert first["key_freq_energy"] == pytest.approx(0.0, abs=1e-6)
    assert first["frac_neurons_explained"] == 0.0
    # sparsity does not depend on which frequencies are key
    assert first["gini_embed"] == pytest.approx(30 / 32, abs=1e-4)
    # an empty set fixes nothing: the restricted loss keeps only the constant
    (alone,) = measures_with_fixed_key_freqs(
        HandBuiltFourierModel(P, [FREQS]), P, "x+y", mask, [[]]
    )
    assert alone["key_freq_count"] == 0 and alone["frac_neurons_explained"] == 0.0
    assert alone["restricted_loss"] == pytest.approx(math.log(P), abs=0.05)


def test_a_partial_set_explains_its_share_of_the_neurons(two_members):
    (partial, _) = measures_with_fixed_key_freqs(
        two_members, P, "x+y", random_train_mask(P), [[FREQS[0]], list(OTHER_FREQS)]
    )
    assert partial["frac_neurons_explained"] == pytest.approx(1 / 3)  # 8 of 24 neurons
    assert partial["key_freq_energy"] == pytest.approx(1 / 3, abs=1e-4)


def test_measure_series_are_metric_shaped_and_leave_out_what_does_not_apply():
    points = [
        (0, [{"restricted_loss": 4.0, "excluded_loss": None, "weight_norm": 40.0}]),
        (100, [{"restricted_loss": 2.0, "excluded_loss": None, "weight_norm": 38.5}]),
    ]
    series = measure_series(points, ("restricted_loss", "excluded_loss", "weight_norm"))
    assert series == [
        {"name": "restricted_loss", "member": 0, "steps": [0, 100], "values": [4.0, 2.0]},
        {"name": "weight_norm", "member": 0, "steps": [0, 100], "values": [40.0, 38.5]},
    ]
    json.dumps(series)
