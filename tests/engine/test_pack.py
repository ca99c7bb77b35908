"""Packs: a sweep's members trained as one ensemble (Trainer.for_members), each exactly as alone,
checkpointed on its own, leaving the batch when it is done."""
from __future__ import annotations


import pytest
import torch

from service.contract.spec import ExperimentSpec, spec_from_preset
from service.science.sweeps import pack_spec
from worker.engine.train import Trainer

# Four members that differ in every per-member value (sweeps.PER_MEMBER_PATHS).
MEMBER_VALUES = [
    {"training": {"seed": 0}, "optimizer": {"lr": 1e-3, "weight_decay": 1.0}, "model": {"init_scale": 1.0},
     "task": {"train_fraction": 0.5, "split_seed": 0}},
    {"training": {"seed": 1}, "optimizer": {"lr": 3e-3, "weight_decay": 0.0}, "model": {"init_scale": 0.5},
     "task": {"train_fraction": 0.5, "split_seed": 1}},
    {"training": {"seed": 2}, "optimizer": {"lr": 2e-3, "weight_decay": 0.3}, "model": {"init_scale": 2.0},
     "task": {"train_fraction": 0.3, "split_seed": 2}},
    {"training": {"seed": 3}, "optimizer": {"lr": 1e-3, "weight_decay": 0.1}, "model": {"init_scale": 1.0},
     "task": {"train_fraction": 0.7, "split_seed": 0}},
]


def members(tiny_spec, values=MEMBER_VALUES, **common) -> list[ExperimentSpec]:
    from service.contract.spec import deep_merge

    return [tiny_spec(**deep_merge(common, v)) for v in values]


def record(trainer: Trainer, **kwargs) -> dict:
    out = {"rows": [], "checkpoints": [], "left": []}
    out["summary"] = trainer.run(
        on_metrics=out["rows"].extend,
        on_checkpoint=lambda s, b, m: out["checkpoints"].append((s, b, m)),
        on_member_left=lambda *a: out["left"].append(a),
        **kwargs,
    )
    return out


def series(rows: list[dict], member: int = 0) -> dict[tuple[int, str], float]:
    return {(r["step"], r["name"]): r["value"] for r in rows if r["member"] == member}


def assert_same_series(mine: dict, theirs: dict) -> None:
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


def assert_pack_trains_like_alone(specs: list[ExperimentSpec], **run_kwargs) -> dict:
    pack = record(Trainer.for_members(specs), **run_kwargs)
    for e, spec in enumerate(specs):
        alone = record(Trainer(spec), **run_kwargs)
        assert_same_series(series(pack["rows"], e), series(alone["rows"]))
    return pack


def test_pack_spec_holds_every_per_member_value(tiny_spec):
    specs = members(tiny_spec)
    ens = pack_spec(specs).ensemble
    assert ens.size == 4 and ens.seeds == [0, 1, 2, 3] and ens.lr == [1e-3, 3e-3, 2e-3, 1e-3]
    assert ens.init_scale == [1.0, 0.5, 2.0, 1.0] and ens.train_fraction == [0.5, 0.5, 0.3, 0.7]
    assert ens.split_seed == [0, 1, 2, 0] and ens.grad_filter_lamb is None


def test_full_batch_pack_members_train_exactly_as_alone(tiny_spec):
    specs = members(tiny_spec)
    trainer = Trainer.for_members(specs)
    assert not trainer.sets.shared_split and trainer.train_mask_grid().shape == (4, 11, 11)
    for e, spec in enumerate(specs):  # each member's training set is its own run's
        alone = Trainer(spec)
        assert torch.equal(trainer.train_mask_grid()[e], alone.train_mask_grid())
    pack = assert_pack_trains_like_alone(specs)
    assert pack["summary"]["stopped"] == "completed" and [m["member"] for m in pack["summary"]["members"]] == [0, 1, 2, 3]


def test_minibatch_pack_members_draw_their_own_rows_like_alone(tiny_spec):
    assert_pack_trains_like_alone(members(tiny_spec, training={"batch_size": 16, "steps": 30}))


def test_grokfast_lambdas_per_member(tiny_spec):
    values = [{"training": {"seed": s}, "optimizer": {"grad_filter": {"kind": "ema", "alpha": 0.9, "lamb": lamb}}}
              for s, lamb in ((0, 0.5), (1, 2.0), (2, 5.0))]
    specs = members(tiny_spec, values, training={"steps": 30})
    assert pack_spec(specs).ensemble.grad_filter_lamb == [0.5, 2.0, 5.0]
    assert_pack_trains_like_alone(specs)


def test_a_pack_with_one_split_keeps_the_shared_fast_path(tiny_spec):
    values = [{"training": {"seed": s}, "optimizer": {"weight_decay": wd}} for s, wd in ((0, 1.0), (1, 0.0))]
    trainer = Trainer.for_members(members(tiny_spec, values))
    assert trainer.sets.shared_split and trainer.sets.train_tokens.shape == (trainer.spec.n_train, 3)
    assert trainer.train_mask_grid().shape == (11, 11)


def test_member_checkpoints_load_alone_and_continue_like_the_pack_member(tiny_spec):
    specs = members(tiny_spec, training={"batch_size": 16})  # 40 steps, checkpoints at 20 and 40
    pack = record(Trainer.for_members(specs))
    at_20 = [(b, m) for s, b, m in pack["checkpoints"] if s == 20]
    assert sorted(m["member"] for _, m in at_20) == [0, 1, 2, 3]
    assert len(pack["checkpoints"]) == 8
    for blob, meta in at_20:
        e = meta["member"]
        assert meta["spec_hash"] == specs[e].spec_hash() and meta["step"] == 20
        alone = Trainer.from_checkpoint(specs[e], blob)
        assert alone.n_members == 1 and alone.step == 20
        rest = record(alone)
        theirs = series(rest["rows"])
        mine = {k: v for k, v in series(pack["rows"], e).items() if k[0] > 20}
        assert_same_series(mine, theirs)


def test_a_pack_resumes_from_its_member_checkpoints_identically(tiny_spec):
    specs = members(tiny_spec, training={"batch_size": 16}, optimizer={"grad_filter": {"kind": "ma", "window": 5}})
    straight = record(Trainer.for_members(specs))
    first = record(Trainer.for_members(specs), until_step=20)
    blobs = {m["member"]: b for s, b, m in first["checkpoints"] if s == 20}
    resumed = Trainer.from_member_checkpoints(specs, [blobs[e] for e in range(4)])
    assert resumed.step == 20 and resumed.members == [0, 1, 2, 3]
    second = record(resumed)
    assert first["rows"] + second["rows"] == straight["rows"]  # exact, same order


def test_member_checkpoints_at_different_steps_are_refused(tiny_spec):
    specs = members(tiny_spec)[:2]
    run = record(Trainer.for_members(specs))
    blob_0 = next(b for s, b, m in run["checkpoints"] if s == 20 and m["member"] == 0)
    blob_1 = next(b for s, b, m in run["checkpoints"] if s == 40 and m["member"] == 1)
    with pytest.raises(ValueError, match="same step"):
        Trainer.from_member_checkpoints(specs, [blob_0, blob_1])


def test_a_diverging_member_leaves_and_the_others_train_on_as_alone(tiny_spec):
    specs = members(tiny_spec)[:3]
    specs[1] = tiny_spec(**{**MEMBER_VALUES[1], "model": {"init_scale": 1000.0}, "optimizer": {"lr": 10.0}})
    trainer = Trainer.for_members(specs)
    pack = record(trainer)
    assert [(m, reason) for m, reason, _ in pack["left"]] == [(1, "nonfinite")]
    left_at = pack["left"][0][2]
    assert trainer.n_members == 2 and trainer.members == [0, 2]
    assert trainer.model.W_E.shape[0] == 2 and trainer.spec.ensemble.size == 2
    # Its rows and its last checkpoint came before it left; nothing after.
    assert max(r["step"] for r in pack["rows"] if r["member"] == 1) == left_at
    assert [s for s, _, m in pack["checkpoints"] if m["member"] == 1][-1] == left_at
    for e in (0, 2):
        assert_same_series(series(pack["rows"], e), series(record(Trainer(specs[e]))["rows"]))
    summary = pack["summary"]
    assert summary["stopped"] == "completed" and [m["member"] for m in summary["members"]] == [0, 1, 2]
    assert summary["members"][1]["left"] == "nonfinite"


def test_members_that_grokked_leave_under_stop_on_grok(tiny_spec, monkeypatch):
    specs = members(tiny_spec, training={"stop_on_grok": True, "steps": 40, "eval_every": 10})[:3]
    trainer = Trainer.for_members(specs)
    # Evals at 0, 1, 2, 4, 8, 10, 20, 30: member 2 (row 1 once member 1 left) groks later.
    val = {0: [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0], 1: [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
           2: [0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]}
    calls = {"n": 0}

    def scripted_evaluate() -> list[dict]:
        i = calls["n"]
        calls["n"] += 1
        return [{"train_loss": 0.1, "train_acc": 1.0, "val_loss": 0.1, "val_acc": val[m][i], "weight_norm": 1.0}
                for m in trainer.members]

    monkeypatch.setattr(trainer, "evaluate", scripted_evaluate)
    pack = record(trainer)
    assert pack["left"] == [(1, "grokked", 4), (0, "grokked", 20), (2, "grokked", 30)]
    assert pack["summary"]["stopped"] == "grokked" and pack["summary"]["steps"] == 30
    assert [m["generalization_step"] for m in pack["summary"]["members"]] == [8, 1, 10]
    for member, step in ((1, 4), (0, 20), (2, 30)):
        assert max(r["step"] for r in pack["rows"] if r["member"] == member) == step
        assert any(s == step and m["member"] == member for s, _, m in pack["checkpoints"])


def test_cancelled_members_leave_with_a_last_evaluation_and_checkpoint(tiny_spec):
    specs = members(tiny_spec)[:3]
    trainer = Trainer.for_members(specs)
    progress = {"step": 0}
    stop = lambda: {2: "cancelled"} if progress["step"] >= 13 else {}  # noqa: E731
    pack = record(trainer, members_to_stop=stop, on_progress=lambda s, t: progress.update(step=s))
    assert pack["left"] == [(2, "cancelled", 13)]
    assert max(r["step"] for r in pack["rows"] if r["member"] == 2) == 13
    assert [s for s, _, m in pack["checkpoints"] if m["member"] == 2] == [13]
    assert trainer.members == [0, 1] and trainer.n_members == 2
    for e in (0, 1):  # the others never saw the extra evaluation
        assert_same_series(series(pack["rows"], e), series(record(Trainer(specs[e]))["rows"]))


def test_analysis_rows_carry_original_members_and_use_each_members_mask(tiny_spec):
    from worker.analysis.callback import analysis_callback, member_measures

    specs = members(tiny_spec, analysis={"every": 20})[:3]
    stored: list[tuple[int, list[int]]] = []
    trainer = Trainer.for_members(specs)
    progress = {"step": 0}
    pack = record(
        trainer, on_analysis=analysis_callback(trainer.spec, lambda s, ms: stored.append((s, list(trainer.members)))),
        members_to_stop=lambda: {0: "cancelled"} if progress["step"] >= 5 else {},
        on_progress=lambda s, t: progress.update(step=s),
    )
    assert stored == [(0, [0, 1, 2]), (20, [1, 2]), (40, [1, 2])]
    measured = {(r["step"], r["member"]) for r in pack["rows"] if r["name"] == "excluded_loss"}
    assert measured == {(0, 0), (0, 1), (0, 2), (20, 1), (20, 2), (40, 1), (40, 2)}
    # Member 2's excluded loss is over its own training pairs: as when it runs alone.
    alone = Trainer(specs[2])
    for row in pack["rows"]:
        if row["name"] == "excluded_loss" and row["member"] == 2 and row["step"] == 0:
            (theirs,) = member_measures(specs[2], alone)
            assert row["value"] == pytest.approx(theirs["excluded_loss"], rel=1e-4)


def test_an_ensemble_experiment_is_one_member_holding_all_its_rows(tiny_spec):
    spec = tiny_spec(ensemble={"size": 2})
    trainer = Trainer(spec)
    run = record(trainer)
    assert all(m["member"] == 0 for _, _, m in run["checkpoints"])
    assert [s for s, _, _ in run["checkpoints"]] == [20, 40] and run["left"] == []
    blob = run["checkpoints"][0][1]
    assert Trainer.from_checkpoint(spec, blob).n_members == 2


def test_spec_hash_of_old_specs_is_unchanged_and_lists_are_validated():
    from pydantic import ValidationError

    # Hashes of these presets before the per-member lists existed.
    assert spec_from_preset("nanda2023").spec_hash() == "5b02b5e4c4cfbab7f4a14cdb0d64aea7c54775d65f307ca5964b5768f994b7e5"
    assert spec_from_preset("ci-small").spec_hash() == "f82f160e7ae1911b5d92216cadea97781c23263a72f8a3a400740dfd17d0fffa"
    # model.init came later: its default leaves the hash alone, "pytorch" moves it
    assert spec_from_preset("ci-small", model={"init": "normal"}).spec_hash() == spec_from_preset(
        "ci-small").spec_hash()
    assert spec_from_preset("ci-small", model={"init": "pytorch"}).spec_hash() != spec_from_preset(
        "ci-small").spec_hash()
    with_lists = spec_from_preset("ci-small", ensemble={"size": 2, "init_scale": [1.0, 2.0]})
    assert with_lists.spec_hash() != spec_from_preset("ci-small", ensemble={"size": 2}).spec_hash()
    for bad, message in (
        ({"size": 2, "init_scale": [1.0]}, "init_scale must have one entry per member"),
        ({"size": 1, "init_scale": [0.0]}, r"init_scale entries must be in \(0, 1000\]"),
        ({"size": 1, "train_fraction": [1.0]}, r"train_fraction entries must be in \(0, 1\)"),
        ({"size": 1, "split_seed": [0, 1]}, "split_seed must have one entry per member"),
        ({"size": 1, "grad_filter_lamb": [1.0]}, "grad_filter_lamb needs optimizer.grad_filter"),
    ):
        with pytest.raises(ValidationError, match=message):
            spec_from_preset("ci-small", ensemble=bad)
    ok = spec_from_preset("ci-small", ensemble={"size": 1, "grad_filter_lamb": [3.0]},
                          optimizer={"grad_filter": {"kind": "ema"}})
    assert ok.ensemble.grad_filter_lamb == [3.0]


def test_the_sync_free_attention_of_the_gpu_path_gives_the_same_logits(tiny_spec):
    """On CUDA the one-layer model scores every vocab token as a query (no torch.unique, which
    would stop the GPU every step); the CPU checks that path against the default one."""
    trainer = Trainer.for_members(members(tiny_spec)[:2])
    model, tokens = trainer.model, trainer.sets.train_tokens
    tok = model.member_tokens(tokens)
    table, index = model.first_block_inputs(tok)
    x_unique, acts_unique = model.single_block(tok, table, index, all_query_tokens=False)
    x_all, acts_all = model.single_block(tok, table, index, all_query_tokens=True)
    torch.testing.assert_close(x_all, x_unique, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acts_all, acts_unique, rtol=1e-5, atol=1e-6)
