"""Data curricula (spec data_schedule): the training set shrinks during a run, the validation set
stays, a resumed run and a pack member shrink exactly as the run alone, and a grokked network
trained on too few examples ungroks (Varma et al. 2023; ci-small itself ungrokking is the
varma2023-ungrokking reproduction, tests/integration/test_reproductions_ci.py)."""
from __future__ import annotations

import pytest
import torch

from service.contract.spec import spec_from_preset
from worker.engine.evaluate import loss_and_accuracy
from worker.engine.train import Trainer

SCHEDULE = [{"at_step": 10, "train_fraction": 0.3}, {"at_step": 20, "train_fraction": 0.1}]


def rows_by_key(rows: list[dict], member: int = 0, after: int = -1) -> dict:
    return {(r["step"], r["name"]): r["value"] for r in rows
            if r["member"] == member and r["step"] > after}


def val_acc(rows: list[dict], member: int = 0) -> dict[int, float]:
    return {r["step"]: r["value"] for r in rows if r["name"] == "val_acc" and r["member"] == member}


def test_the_training_set_shrinks_to_nested_seeded_subsets_and_val_stays(tiny_spec):
    spec = tiny_spec(data_schedule=SCHEDULE)  # p=11: 121 pairs, 73 for training at first
    trainer = Trainer(spec)
    first_train = set(trainer.sets.data.train_idx.tolist())
    val = trainer.sets.val_tokens.clone()
    sizes, sets = {}, {}
    for step in (0, 9, 10, 19, 20, 39):
        trainer.step = step
        trainer.next_batch()
        sizes[step] = trainer.sets.train_tokens.shape[0]
        sets[step] = set(trainer.sets.data.train_idx.tolist())
        assert torch.equal(trainer.sets.val_tokens, val)  # the held-out pairs, never a removed one
    assert sizes == {0: 73, 9: 73, 10: 36, 19: 36, 20: 12, 39: 12}
    assert sets[0] == first_train and sets[20] < sets[10] < sets[0]
    assert int(trainer.train_mask_grid().sum()) == 12

    again = Trainer(spec)  # deterministic: the step decides the subset
    again.step = 25
    again.evaluate()
    assert set(again.sets.data.train_idx.tolist()) == sets[20]
    other_split = Trainer(tiny_spec(data_schedule=SCHEDULE, task={"split_seed": 5}))
    other_split.step = 20
    other_split.next_batch()
    assert set(other_split.sets.data.train_idx.tolist()) != sets[20]


def test_train_metrics_are_those_of_the_current_training_set(tiny_spec):
    trainer = Trainer(tiny_spec(data_schedule=SCHEDULE))
    rows: list[dict] = []
    trainer.run(on_metrics=rows.extend)
    train_loss, train_acc = loss_and_accuracy(
        trainer.model, trainer.sets.train_tokens, trainer.sets.train_labels, 1, trainer.spec.optimizer
    )
    final = rows_by_key(rows)
    assert trainer.sets.train_tokens.shape[0] == 12
    assert final[40, "train_acc"] == pytest.approx(float(train_acc[0]))
    assert final[40, "train_loss"] == pytest.approx(float(train_loss[0]))


def test_without_a_schedule_a_spec_hashes_and_trains_as_before(tiny_spec):
    assert spec_from_preset("ci-small").spec_hash() == (
        "f82f160e7ae1911b5d92216cadea97781c23263a72f8a3a400740dfd17d0fffa"
    )
    assert spec_from_preset("ci-small", data_schedule=[]).spec_hash() == spec_from_preset("ci-small").spec_hash()
    plain, scheduled = tiny_spec(), tiny_spec(data_schedule=[{"at_step": 30, "train_fraction": 0.3}])
    assert plain.spec_hash() != scheduled.spec_hash()
    a, b = [], []
    first, second = Trainer(plain), Trainer(scheduled)
    first.run(on_metrics=a.extend, until_step=30)
    second.run(on_metrics=b.extend, until_step=30)
    before = lambda rows: {k: v for k, v in rows_by_key(rows).items() if k[0] < 30}  # noqa: E731
    assert before(a) == before(b)
    for p, q in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("resume_at", [10, 15])
def test_a_run_resumed_mid_schedule_continues_on_the_same_subset(tiny_spec, resume_at):
    spec = tiny_spec(data_schedule=SCHEDULE, training={"checkpoint_every": 5, "batch_size": 8})
    whole = Trainer(spec)
    rows: list[dict] = []
    blobs: dict[int, bytes] = {}
    whole.run(on_metrics=rows.extend, on_checkpoint=lambda step, blob, meta: blobs.setdefault(step, blob))

    resumed = Trainer.from_checkpoint(spec, blobs[resume_at])
    resumed_rows: list[dict] = []
    resumed.run(on_metrics=resumed_rows.extend)

    assert rows_by_key(resumed_rows) == rows_by_key(rows, after=resume_at)
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(resumed.sets.data.train_idx, whole.sets.data.train_idx)


def test_pack_members_shrink_their_own_training_sets_as_alone(tiny_spec):
    specs = [
        tiny_spec(data_schedule=SCHEDULE, training={"seed": 0}, task={"split_seed": 0}),
        tiny_spec(data_schedule=SCHEDULE, training={"seed": 1},
                  task={"split_seed": 3, "train_fraction": 0.5}),
    ]
    pack = Trainer.for_members(specs)
    pack_rows: list[dict] = []
    pack.run(on_metrics=pack_rows.extend)
    assert not pack.sets.shared_split
    for e, spec in enumerate(specs):
        alone = Trainer(spec)
        alone_rows: list[dict] = []
        alone.run(on_metrics=alone_rows.extend)
        assert torch.equal(pack.train_mask_grid()[e], alone.train_mask_grid())
        mine, theirs = rows_by_key(pack_rows, member=e), rows_by_key(alone_rows)
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


# A small transformer that generalises on x+y mod 47 within ~160 steps (lr 1e-2, seed 1: val acc
# >= 0.99 from step ~160) and, shrunk to 5% of the pairs (110 examples) at step 240 with weight
# decay 1, ungroks: val acc 0.998 -> ~0.13 by step 500 while train acc stays 1. About 2 s.
FAST_UNGROK = {
    "model": {"d_model": 32, "n_heads": 2, "d_mlp": 64},
    "optimizer": {"lr": 1e-2},
    "training": {"steps": 500, "eval_every": 20, "seed": 1, "checkpoint_every": 1000, "device": "cpu"},
    "analysis": {"every": None},
    "data_schedule": [{"at_step": 240, "train_fraction": 0.05}],
}


def ungrokking(spec_overrides: dict) -> tuple[dict[int, float], dict[int, float]]:
    spec = spec_from_preset("ci-small", **spec_overrides)
    rows: list[dict] = []
    Trainer(spec).run(on_metrics=rows.extend)
    train = {r["step"]: r["value"] for r in rows if r["name"] == "train_acc"}
    return train, val_acc(rows)


def test_a_small_network_that_generalised_ungroks_on_too_few_examples():
    train, val = ungrokking(FAST_UNGROK)
    at = FAST_UNGROK["data_schedule"][0]["at_step"]
    assert max(v for s, v in val.items() if s <= at) >= 0.99  # generalised before the shrink
    assert val[at] >= 0.99
    assert val[500] < 0.3  # ungrokked: far below its generalised value...
    assert all(train[s] >= 0.99 for s in train if s >= at)  # ...while it still fits its data
