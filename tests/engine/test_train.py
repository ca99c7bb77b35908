"""The training loop: schedule, callbacks, stopping, ensembles, minibatches and exact resume."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from worker.engine.train import Trainer, is_eval_step

NAMES = {"train_loss", "train_acc", "val_loss", "val_acc", "weight_norm"}


def record(trainer: Trainer, **kwargs) -> tuple[dict, list[dict], list[tuple[int, bytes, dict]]]:
    rows: list[dict] = []
    checkpoints: list[tuple[int, bytes, dict]] = []
    summary = trainer.run(
        on_metrics=rows.extend, on_checkpoint=lambda s, b, m: checkpoints.append((s, b, m)), **kwargs
    )
    return summary, rows, checkpoints


def test_evaluates_at_log_spaced_early_steps_every_eval_every_and_at_the_end(tiny_spec):
    calls: list[list[dict]] = []
    trainer = Trainer(tiny_spec(training={"steps": 45, "eval_every": 16}, ensemble={"size": 2}))
    summary = trainer.run(on_metrics=calls.append)
    assert [c[0]["step"] for c in calls] == [0, 1, 2, 4, 8, 16, 32, 45]
    for call in calls:  # one call per eval: every metric of every member, once, at one step
        assert len({r["step"] for r in call}) == 1
        assert sorted((r["member"], r["name"]) for r in call) == sorted((m, n) for m in (0, 1) for n in NAMES)
        assert all(isinstance(r["value"], float) for r in call)
    assert summary["steps"] == 45 and summary["stopped"] == "completed"
    assert [is_eval_step(s, 100) for s in (0, 1, 3, 64, 96, 100, 128, 200)] == [
        True, True, False, True, False, True, False, True]


def test_training_reduces_the_loss_and_reports_a_summary(tiny_spec):
    summary, rows, _ = record(Trainer(tiny_spec(training={"steps": 60}, optimizer={"lr": 1e-2})))
    loss = {r["step"]: r["value"] for r in rows if r["name"] == "train_loss"}
    assert loss[60] < 0.5 * loss[0]
    member = summary["members"][0]
    assert member["final"]["train_loss"] == loss[60]
    assert member["seed"] == 0 and member["lr"] == 1e-2 and member["weight_decay"] == 1.0
    acc = [(r["step"], r["value"]) for r in rows if r["name"] == "train_acc"]
    first = next((s for s, v in acc if v >= 0.99), None)
    assert member["memorization_step"] == first
    norms = [r["value"] for r in rows if r["name"] == "weight_norm"]
    assert all(n > 0 for n in norms)


def test_checkpoints_progress_and_analysis_callbacks(tiny_spec):
    spec = tiny_spec(training={"steps": 50, "checkpoint_every": 20}, analysis={"every": 25})
    progress: list[tuple[int, int]] = []
    analysed: list[int] = []

    def on_analysis(trainer: Trainer, step: int) -> list[dict]:
        analysed.append(step)
        return [{"step": step, "member": 0, "name": "probe", "value": float(trainer.step)}]

    rows: list[dict] = []
    checkpoints: list[int] = []
    Trainer(spec).run(
        on_metrics=rows.extend, on_checkpoint=lambda s, b, m: checkpoints.append(s),
        on_progress=lambda s, t: progress.append((s, t)), on_analysis=on_analysis,
    )
    assert checkpoints == [20, 40, 50]
    assert progress == [(s, 50) for s in range(1, 51)]
    assert analysed == [0, 25, 50]
    assert [r["step"] for r in rows if r["name"] == "probe"] == [0, 25, 50]


def test_should_stop_cancels_and_leaves_a_checkpoint(tiny_spec):
    polls = {"n": 0}

    def should_stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 13  # polled before each step: 13 steps run

    summary, rows, checkpoints = record(Trainer(tiny_spec()), should_stop=should_stop)
    assert summary["stopped"] == "cancelled" and summary["steps"] == 13
    assert checkpoints[-1][0] == 13
    assert max(r["step"] for r in rows) == 13  # the last state is evaluated too


def test_stop_on_grok_needs_three_consecutive_evals_of_every_member(tiny_spec, monkeypatch):
    spec = tiny_spec(training={"steps": 40, "eval_every": 10, "stop_on_grok": True}, ensemble={"size": 2})
    trainer = Trainer(spec)
    # Eval steps 0, 1, 2, 4, 8, 10, 20: member 1 dips at step 4, so its streak restarts at 8.
    val = {0: [0.5, 0.995, 0.999, 1.0, 1.0, 1.0, 1.0], 1: [0.5, 0.999, 0.999, 0.98, 0.99, 1.0, 1.0]}
    calls = {"n": 0}

    def scripted_evaluate() -> list[dict]:
        i = calls["n"]
        calls["n"] += 1
        return [{"train_loss": 0.0, "train_acc": 1.0, "val_loss": 0.0, "val_acc": val[e][i], "weight_norm": 1.0}
                for e in (0, 1)]

    monkeypatch.setattr(trainer, "evaluate", scripted_evaluate)
    summary, rows, checkpoints = record(trainer)
    assert summary["stopped"] == "grokked"
    assert summary["steps"] == 20  # evals at 8, 10, 20 are member 1's three in a row
    assert [m["generalization_step"] for m in summary["members"]] == [1, 1]
    assert checkpoints[-1][0] == 20


def test_ensemble_equals_independent_single_runs(tiny_spec):
    """E=3 (seeds 0, 1, 2; per-member minibatches) against three E=1 runs with those seeds."""
    overrides = {"training": {"steps": 30, "batch_size": 24}}
    _, ensemble_rows, _ = record(Trainer(tiny_spec(ensemble={"size": 3}, **overrides)))
    for seed in range(3):
        spec = tiny_spec(training={**overrides["training"], "seed": seed})
        _, single_rows, _ = record(Trainer(spec))
        mine = {(r["step"], r["name"]): r["value"] for r in ensemble_rows if r["member"] == seed}
        theirs = {(r["step"], r["name"]): r["value"] for r in single_rows}
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


def test_minibatch_training_is_deterministic_from_the_seed(tiny_spec):
    spec = tiny_spec(training={"steps": 20, "batch_size": 16})
    a, b = Trainer(spec), Trainer(spec)
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    assert a.next_batch()[0].shape == (1, 16, 3)
    _, rows_a, _ = record(Trainer(spec))
    _, rows_b, _ = record(Trainer(spec))
    assert rows_a == rows_b
    _, rows_c, _ = record(Trainer(tiny_spec(training={"steps": 20, "batch_size": 16, "seed": 1})))
    assert [r["value"] for r in rows_a] != [r["value"] for r in rows_c]
    full = Trainer(tiny_spec())
    assert full.next_batch()[0].shape == (full.spec.n_train, 3)


RESUME_CASES = {
    "adamw-full-batch": {},
    "sgd-minibatch-ema": {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "grad_filter": {"kind": "ema", "alpha": 0.9, "lamb": 2.0}},
        "training": {"batch_size": 16},
    },
    "adam-ma-orthogonal-stablemax": {
        "optimizer": {"name": "adam", "weight_decay": 0.1, "orthogonal_grad": True, "loss": "stablemax",
                      "loss_float64": True, "grad_filter": {"kind": "ma", "window": 7, "lamb": 1.0}},
        "ensemble": {"size": 2, "lr": [1e-3, 3e-3]},
        "training": {"batch_size": 32},
    },
}


@pytest.mark.parametrize("overrides", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_from_checkpoint_is_bit_identical(tiny_spec, overrides):
    spec = tiny_spec(**overrides)  # 40 steps, eval every 10
    straight = Trainer(spec)
    summary_straight, rows_straight, _ = record(straight)

    first = Trainer(spec)
    _, rows_first, checkpoints = record(first, until_step=20)
    step, blob, meta = checkpoints[-1]
    assert step == 20 and meta["step"] == 20 and meta["spec_hash"] == spec.spec_hash()
    resumed = Trainer.from_checkpoint(spec, blob)
    assert resumed.step == 20
    summary_resumed, rows_second, _ = record(resumed)

    assert rows_first + rows_second == rows_straight  # exact float equality, same order
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), name
    for key in ("steps", "stopped"):
        assert summary_resumed[key] == summary_straight[key]
    assert [m["final"] for m in summary_resumed["members"]] == [m["final"] for m in summary_straight["members"]]


def test_resuming_a_finished_run_reports_nothing_twice(tiny_spec):
    spec = tiny_spec(training={"steps": 20})
    _, _, checkpoints = record(Trainer(spec))
    final_step, blob, _ = checkpoints[-1]
    assert final_step == 20
    summary, rows, again = record(Trainer.from_checkpoint(spec, blob))
    assert rows == [] and again == []
    assert summary["steps"] == 20 and summary["steps_run"] == 0 and summary["stopped"] == "completed"
    assert summary["members"][0]["final"]["train_loss"] > 0


def test_a_checkpoint_of_another_spec_is_refused(tiny_spec):
    blob = Trainer(tiny_spec()).to_checkpoint()
    with pytest.raises(ValueError, match="spec hash"):
        Trainer.from_checkpoint(tiny_spec(optimizer={"weight_decay": 0.5}), blob)


def test_a_tampered_spec_hash_is_refused(tiny_spec):
    spec = tiny_spec()
    blob = Trainer(spec).to_checkpoint()
    good = spec.spec_hash()
    tampered = blob.replace(good.encode(), ("0" * len(good)).encode())
    assert tampered != blob
    with pytest.raises(ValueError, match="spec hash"):
        Trainer.from_checkpoint(spec, tampered)


def test_checkpoint_is_plain_safetensors_without_pickle(tiny_spec):
    spec = tiny_spec(optimizer={"grad_filter": {"kind": "ema"}}, training={"batch_size": 8})
    trainer = Trainer(spec)
    trainer.train_step()
    blob = trainer.to_checkpoint()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    meta = header.pop("__metadata__")
    assert meta["format"] == "groklab-checkpoint/1" and meta["step"] == "1"
    assert meta["spec_hash"] == spec.spec_hash() and meta["engine_version"]
    assert json.loads(meta["spec"])["task"]["p"] == 11
    # Every byte after the header belongs to exactly one numeric tensor: nothing else hides there.
    spans = sorted(tuple(t["data_offsets"]) for t in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(blob) - 8 - header_len
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert {t["dtype"] for t in header.values()} <= {"F32", "F64", "I64", "U8"}
    names = set(header)
    assert {"param.W_E", "optim.exp_avg", "grad_filter.ema", "rng.torch_cpu", "rng.batches.0", "trainer.step"} <= names
    with pytest.raises(Exception):
        torch.load(__import__("io").BytesIO(blob), weights_only=False)  # not a pickle / zip archive


def test_evaluate_after_loading_reports_the_trained_model(tiny_spec):
    spec = tiny_spec(training={"steps": 30})
    trainer = Trainer(spec)
    trainer.run()
    loaded = Trainer.from_checkpoint(spec, trainer.to_checkpoint())
    assert loaded.step == 30
    assert loaded.evaluate() == trainer.evaluate()


def test_device_auto_is_the_cpu_here(tiny_spec):
    trainer = Trainer(tiny_spec(training={"device": "auto"}))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.device.type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            Trainer(tiny_spec(training={"device": "cuda"}))


def test_engine_imports_no_service_frameworks():
    import subprocess
    import sys

    code = (
        "import sys, worker.engine.train, worker.engine.local, worker.engine.checkpoint;"
        "bad = [m for m in ('sqlalchemy', 'celery', 'fastapi') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__import__("pathlib").Path(__file__).parents[2])


def test_a_checkpoint_missing_a_tensor_is_refused_with_a_clear_error():
    import pytest
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from service.contract.checkpoint_format import read_metadata
    from service.contract.spec import spec_from_preset
    from worker.engine.train import Trainer

    spec = spec_from_preset("ci-small", task={"p": 7}, model={"d_model": 8, "n_heads": 1, "d_mlp": 16},
                            training={"steps": 2, "eval_every": 1, "checkpoint_every": 2})
    blob = Trainer(spec).to_checkpoint()
    tensors = st_load(blob)
    metadata = read_metadata(blob)
    del tensors["param.W_E"]
    with pytest.raises(ValueError, match="does not match this spec"):
        Trainer.from_checkpoint(spec, st_save(tensors, metadata))
