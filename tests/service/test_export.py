"""Export to TransformerLens: a checkpoint's member loads, strictly, into a HookedTransformer
built from the exported config, and computes groklab's own logits on every pair."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as load_tensors
from transformer_lens import HookedTransformer, HookedTransformerConfig
from typer.testing import CliRunner

from service import store
from service.science.export import ExportUnavailable, export_transformer_lens
from service.contract.spec import ExperimentSpec, deep_merge
from tests.builders import tiny_spec
from tests.service.blobs import checkpoint_bytes, overwrite_checkpoint_bytes
from worker.engine.train import Trainer

API = "/api/v1/experiments"
P = 13
# A no-LayerNorm 1-layer (Nanda et al. 2023) and a LayerNorm 2-layer (Power et al. 2022) model.
CONFIGS = {
    "1 layer, no LN, relu": {"n_layers": 1, "layer_norm": False, "act": "relu"},
    "2 layers, LN, gelu": {"n_layers": 2, "layer_norm": True, "act": "gelu"},
}
TOLERANCE = 1e-4
# TransformerLens 3.x warns that HookedTransformer goes in 4.0 (hence the extra's `<4`).
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


# The run whose checkpoint is exported: p=13, 10 steps on the CPU, with a large lr, so that a few
# steps move every weight (LN gains, biases) off its init.
EXPORT_RUN = {
    "task": {"p": P},
    "optimizer": {"lr": 3e-2},
    "training": {"steps": 10, "device": "cpu"},
    "analysis": {"every": None},
}


def export_spec(model: dict, **overrides) -> ExperimentSpec:
    """The test builder's tiny transformer (d_model 16, 2 heads) with these model fields."""
    return tiny_spec(model=model, **deep_merge(EXPORT_RUN, overrides))


def trained_checkpoint(spec: ExperimentSpec, steps: int = 4) -> tuple[Trainer, bytes]:
    trainer = Trainer(spec)
    for _ in range(steps):
        trainer.train_step()
    trainer.step = steps
    return trainer, trainer.to_checkpoint()


def all_pairs(p: int) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)


def load_hooked_transformer(blob: bytes) -> tuple[HookedTransformer, dict]:
    """What a researcher does with the file: the config from its metadata, then a strict load."""
    tensors = load_tensors(blob)
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    cfg = json.loads(metadata["transformer_lens_config"])
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    assert set(tensors) == set(model.state_dict())  # exactly TransformerLens's names
    model.load_state_dict(tensors, strict=True)
    return model.eval(), cfg


def max_logit_difference(model: HookedTransformer, trainer: Trainer, member: int) -> float:
    tokens = all_pairs(P)
    with torch.no_grad():
        ours = trainer.model(tokens)[member]
        theirs = model(tokens)[:, -1]
    assert theirs.shape == ours.shape == (P * P, P)
    return float((theirs - ours).abs().max())


@pytest.mark.parametrize("model", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_export_computes_groklabs_logits_in_transformer_lens(model):
    spec = export_spec(model, ensemble={"size": 2})
    trainer, blob = trained_checkpoint(spec)
    spec_json = spec.model_dump(mode="json")
    for member in (0, 1):
        hooked, cfg = load_hooked_transformer(export_transformer_lens(blob, spec_json, member))
        assert cfg["n_ctx"] == 3 and cfg["d_vocab"] == P + 1 and cfg["d_vocab_out"] == P
        assert cfg["normalization_type"] == ("LN" if model["layer_norm"] else None)
        difference = max_logit_difference(hooked, trainer, member)
        print(f"\n{model}, member {member}: max |logit difference| {difference:.2e}")
        assert difference < TOLERANCE
    # Each member is its own model: member 1's weights are not member 0's.
    other, _ = load_hooked_transformer(export_transformer_lens(blob, spec_json, 1))
    assert max_logit_difference(other, trainer, 0) > 1e-2


def test_s5_transformers_export_too():
    spec = export_spec({}, task={"kind": "permutation", "op": "x*y", "p": None})
    _, blob = trained_checkpoint(spec, steps=1)
    hooked, cfg = load_hooked_transformer(export_transformer_lens(blob, spec.model_dump(mode="json"), 0))
    assert cfg["d_vocab"] == 121 and cfg["d_vocab_out"] == 120


def test_no_export_for_an_mlp_or_a_member_it_lacks():
    mlp = export_spec({"arch": "mlp", "n_layers": 1})
    _, blob = trained_checkpoint(mlp, steps=1)
    with pytest.raises(ExportUnavailable, match="arch 'transformer'.*'mlp'"):
        export_transformer_lens(blob, mlp.model_dump(mode="json"), 0)
    spec = export_spec({})
    _, blob = trained_checkpoint(spec, steps=1)
    with pytest.raises(ExportUnavailable, match=r"member must be in \[0, 0\].*got 1"):
        export_transformer_lens(blob, spec.model_dump(mode="json"), 1)


# ---- the route and the command -----------------------------------------------------------------


def submit_with_checkpoint(client, api_sessions, model: dict, step: int = 4) -> tuple[str, Trainer]:
    """An experiment submitted through the API, with a checkpoint its own spec trained."""
    body = {"name": "export", "preset": "ci-small", "task": {"p": P},
            "model": {"d_model": 16, "n_heads": 2, "d_mlp": 32, **model},
            "optimizer": {"lr": 3e-2}, "training": {"steps": 10}}
    job = client.post(API, json=body)
    assert job.status_code == 201, job.text
    job = job.json()
    trainer, blob = trained_checkpoint(ExperimentSpec.model_validate(job["spec"]), steps=step)
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], step, blob, {})
    return job["id"], trainer


def test_export_route_serves_a_transformer_lens_file(client, api_sessions):
    experiment_id, trainer = submit_with_checkpoint(client, api_sessions, CONFIGS["2 layers, LN, gelu"])
    r = client.get(f"{API}/{experiment_id}/checkpoints/4/export", params={"format": "transformer_lens"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="{experiment_id}-step4-member0.transformer_lens.safetensors"'
    )
    hooked, _ = load_hooked_transformer(r.content)
    assert max_logit_difference(hooked, trainer, 0) < TOLERANCE

    r = client.get(f"{API}/{experiment_id}/checkpoints/5/export")
    assert r.status_code == 404 and "no checkpoint at step 5" in r.json()["detail"]
    r = client.get(f"{API}/{experiment_id}/checkpoints/4/export", params={"member": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "member"]
    assert "this checkpoint holds 1 ensemble member" in r.json()["detail"][0]["msg"]
    r = client.get(f"{API}/{experiment_id}/checkpoints/4/export", params={"format": "onnx"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "format"]


def test_export_route_refuses_an_mlp_and_a_corrupt_checkpoint(client, api_sessions):
    experiment_id, _ = submit_with_checkpoint(client, api_sessions, {"arch": "mlp", "n_layers": 1})
    r = client.get(f"{API}/{experiment_id}/checkpoints/4/export")
    assert r.status_code == 422 and "'mlp'" in r.json()["detail"]

    experiment_id, _ = submit_with_checkpoint(client, api_sessions, {})
    with api_sessions() as s:
        overwrite_checkpoint_bytes(s, experiment_id, None, checkpoint_bytes(b"changed"))
    r = client.get(f"{API}/{experiment_id}/checkpoints/4/export")
    assert r.status_code == 409 and "sha256" in r.json()["detail"]


def test_export_route_refuses_a_checkpoint_without_the_model(client, api_sessions):
    """Intact and in groklab's format, but holding no weights: corrupt, not a server error."""
    job = client.post(API, json={"name": "x", "preset": "ci-small"}).json()
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], 20, checkpoint_bytes(b"no weights"), {})
    r = client.get(f"{API}/{job['id']}/checkpoints/20/export")
    assert r.status_code == 409 and "param.W_E" in r.json()["detail"]


def test_groklab_export_writes_the_file(client, api_sessions, monkeypatch, tmp_path):
    from service.cli import app
    from service.cli import client as client_module
    from service.client import Client

    experiment_id, trainer = submit_with_checkpoint(client, api_sessions, CONFIGS["1 layer, no LN, relu"])
    monkeypatch.setattr(client_module, "_client", lambda url: Client(http=client))
    out = tmp_path / "model.safetensors"
    r = CliRunner().invoke(app, ["export", experiment_id, "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    with safe_open(str(out), "np") as f:
        assert json.loads(f.metadata()["transformer_lens_config"])["n_layers"] == 1
    hooked, _ = load_hooked_transformer(out.read_bytes())
    assert max_logit_difference(hooked, trainer, 0) < TOLERANCE

    r = CliRunner().invoke(app, ["export", experiment_id, "400", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "error 404" in r.output
    assert not (tmp_path / "x").exists()


def test_export_reads_only_the_header_and_the_members_weights(client, api_sessions, monkeypatch):
    """An ensemble's export reads the checkpoint's header and one member's parameters, never
    the other members or the optimizer state: what an export costs the API's memory."""
    members = 8
    body = {"name": "export", "preset": "ci-small", "task": {"p": P},
            "model": {"d_model": 16, "n_heads": 2, "d_mlp": 32}, "optimizer": {"lr": 3e-2},
            "training": {"steps": 10}, "ensemble": {"size": members}}
    job = client.post(API, json=body).json()
    spec = ExperimentSpec.model_validate(job["spec"])
    trainer, blob = trained_checkpoint(spec, steps=4)
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], 4, blob, {})
    read: list[int] = []
    real_range = store.checkpoint_range

    def counted(session, checkpoint, start, end):
        read.append(end - start)
        return real_range(session, checkpoint, start, end)

    monkeypatch.setattr(store, "checkpoint_range", counted)
    r = client.get(f"{API}/{job['id']}/checkpoints/4/export", params={"member": 5})
    assert r.status_code == 200, r.text
    whole = export_transformer_lens(blob, spec.model_dump(mode="json"), 5)
    ours, theirs = load_tensors(r.content), load_tensors(whole)  # the same tensors, exactly
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    hooked, _ = load_hooked_transformer(r.content)
    assert max_logit_difference(hooked, trainer, 5) < TOLERANCE
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    params = sum(e["data_offsets"][1] - e["data_offsets"][0]
                 for name, e in header.items() if name.startswith("param."))
    head = 8 + int.from_bytes(blob[:8], "little")
    assert sum(read) == head + params // members  # a member's share of the weights, no more
    assert sum(read) < len(blob) / (2 * members)
