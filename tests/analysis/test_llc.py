"""The local learning coefficient (worker/analysis/llc.py) on tiny trained models: seeded and
repeatable, each member on its own training set, the model left as it was, bounded in time, and
a clear reason when devinterp is missing."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from service.contract.llc import LLC_SETTING, TRACE_POINTS, LLCSetting
from tests.builders import tiny_spec
from worker.analysis.llc import LLCTimeout, estimate_llc
from worker.engine.train import Trainer

SMALL = LLCSetting(chains=2, draws=30, burnin=10)
RUN = {"task": {"p": 11}, "analysis": {"every": None},
       "training": {"steps": 60, "eval_every": 20, "checkpoint_every": 60, "device": "cpu"}}


def trained(**sections) -> Trainer:
    spec = tiny_spec(width=16, **{**RUN, **sections})
    trainer = Trainer(spec)
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def memorised() -> Trainer:
    return trained()


def test_the_estimate_is_seeded_and_repeatable(memorised):
    first = estimate_llc(memorised, SMALL)
    again = estimate_llc(memorised, SMALL)
    first.pop("took_s"), again.pop("took_s")
    assert first == again
    other_seed = estimate_llc(memorised, LLCSetting(chains=2, draws=30, burnin=10, seed=1))
    assert other_seed["members"][0]["chains"] != first["members"][0]["chains"]


def test_a_trained_models_estimate_and_what_comes_with_it(memorised):
    result = estimate_llc(memorised, SMALL)
    assert result["setting"] == SMALL.as_dict() and result["setting"]["version"] == 2
    [m] = result["members"]
    n = memorised.sets.train_tokens.shape[0]
    assert m["n"] == n and m["nbeta"] == pytest.approx(n / math.log(n))
    assert result["epsilon"] == pytest.approx(SMALL.eps_nbeta / m["nbeta"])  # the step: 1/temperature
    assert m["init_loss"] == pytest.approx(memorised.evaluate()[0]["train_loss"], rel=1e-4)
    assert len(m["chains"]) == 2 and m["llc"] == pytest.approx(sum(m["chains"]) / 2)
    # The sampler moves off the minimum the training found: the loss rises, the LLC is positive.
    assert m["llc"] > 0 and not m["diverged"]
    assert [len(t) for t in m["trace"]] == [SMALL.draws] * 2  # 30 draws: under TRACE_POINTS
    assert all(x > m["init_loss"] for t in m["trace"] for x in t[len(t) // 2:])
    # The documented default setting: what the endpoint uses.
    assert (LLC_SETTING.chains, LLC_SETTING.draws, LLC_SETTING.burnin) == (3, 100, 50)


def test_the_trace_is_bounded():
    trainer = trained(training={**RUN["training"], "steps": 20})
    [m] = estimate_llc(trainer, LLCSetting(chains=1, draws=120, burnin=0))["members"]
    assert len(m["trace"][0]) <= TRACE_POINTS


def test_the_model_and_the_random_stream_are_left_as_they_were(memorised):
    before = [p.detach().clone() for p in memorised.model.parameters()]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    estimate_llc(memorised, SMALL)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(before, memorised.model.parameters()))


def test_members_of_a_pack_each_have_their_own_training_set():
    specs = [tiny_spec(width=16, **{**RUN, "task": {"p": 11, "train_fraction": f}})
             for f in (0.4, 0.7)]
    pack = Trainer.for_members(specs)
    pack.run()
    members = estimate_llc(pack, SMALL)["members"]
    alone = [Trainer(s).sets.train_tokens.shape[0] for s in specs]
    assert [m["n"] for m in members] == alone and alone[0] < alone[1]
    assert [m["nbeta"] for m in members] == pytest.approx([n / math.log(n) for n in alone])
    # One step size for the pack: that of its largest training set (the coldest member).
    assert estimate_llc(pack, SMALL)["epsilon"] == pytest.approx(SMALL.eps_nbeta / members[1]["nbeta"])
    losses = [row["train_loss"] for row in pack.evaluate()]
    assert [m["init_loss"] for m in members] == pytest.approx(losses, rel=1e-4)
    assert all(math.isfinite(m["llc"]) for m in members)


def test_past_its_time_bound_the_estimate_stops(memorised):
    with pytest.raises(LLCTimeout, match="time bound"):
        estimate_llc(memorised, SMALL, time_limit_s=1e-6)


def test_without_devinterp_the_reason_names_the_extra(memorised, monkeypatch):
    monkeypatch.setitem(sys.modules, "devinterp.slt.sampler", None)  # import fails
    with pytest.raises(RuntimeError, match=r"pip install 'groklab\[interp\]'"):
        estimate_llc(memorised, SMALL)
