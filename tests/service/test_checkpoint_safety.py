"""Crafted checkpoints are refused, with an error that says why, wherever one is read: the
download route, the store's verified load (what a resumed job reads), and the engine's loader
(which only ever reads safetensors, never pickle)."""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import pickle
import struct
from pathlib import Path

import pytest

from service import store
from tests.service.blobs import checkpoint_bytes, overwrite_checkpoint_bytes
from tests.builders import tiny_spec

API = "/api/v1/experiments"
STEP = 20


def safetensors_with_header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


class WritesAFile:
    """Unpickling this creates the file: proof that a loader ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (str(self.path), "w"))


def crafted(marker: Path) -> dict[str, bytes]:
    """Blobs that are not groklab checkpoints, by what is wrong with them."""
    import torch

    saved = io.BytesIO()
    torch.save({"param.W_E": torch.zeros(3), "evil": WritesAFile(marker)}, saved)
    groklab_meta = {"__metadata__": {"format": "groklab-checkpoint/1"}}
    return {
        "pickle": pickle.dumps(WritesAFile(marker)),
        "torch.save": saved.getvalue(),
        "garbage header": safetensors_with_header(b"\xff\xfe not json at all"),
        "header not an object": safetensors_with_header(b"[1, 2, 3]"),
        "metadata not an object": safetensors_with_header(b'{"__metadata__": ["format"]}'),
        "another format": checkpoint_bytes(b"abc", format="pt"),
        "offsets past the end": safetensors_with_header(
            json.dumps({**groklab_meta, "w": {"dtype": "F32", "shape": [4],
                                              "data_offsets": [0, 1 << 40]}}).encode(),
            b"\x00" * 16,
        ),
        "header longer than the blob": struct.pack("<Q", 1 << 62) + b"{}",
        "too short": b"\x01\x02",
    }


CRAFTED = [
    "pickle", "torch.save", "garbage header", "header not an object", "metadata not an object",
    "another format", "offsets past the end", "header longer than the blob", "too short",
]


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "pickle-ran"
    yield path
    assert not path.exists(), "a loader unpickled a crafted checkpoint"


# ---- the engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_spec():
    return tiny_spec(task={"p": 11}, training={"steps": 5})


def test_the_engine_loads_its_own_checkpoints(engine_spec):
    from worker.engine.checkpoint import load_checkpoint
    from worker.engine.train import Trainer

    blob = Trainer(engine_spec).to_checkpoint()
    tensors, metadata = load_checkpoint(blob)
    assert metadata["format"] == "groklab-checkpoint/1" and "param.W_E" in tensors
    assert Trainer.from_checkpoint(engine_spec, blob).step == 0


@pytest.mark.parametrize("kind", CRAFTED)
def test_the_engine_refuses_crafted_checkpoints(engine_spec, marker, kind):
    from worker.engine.checkpoint import load_checkpoint
    from worker.engine.train import Trainer

    blob = crafted(marker)[kind]
    with pytest.raises(ValueError, match="not a (groklab )?checkpoint") as loading:
        load_checkpoint(blob)
    with pytest.raises(ValueError) as resuming:
        Trainer.from_checkpoint(engine_spec, blob)
    # Either the layout is refused, or (another format) the spec hash it lacks is.
    assert str(resuming.value) == str(loading.value) or "spec hash" in str(resuming.value)


def test_the_engine_refuses_tensors_that_do_not_fit_their_bytes(engine_spec):
    from worker.engine.checkpoint import load_checkpoint
    from worker.engine.train import Trainer

    blob = Trainer(engine_spec).to_checkpoint()
    with pytest.raises(ValueError, match="data_offsets .* within the"):
        load_checkpoint(blob[:-100])  # the header promises bytes that are not there
    # A header whose shapes do not match their offsets: safetensors' own check, same error type.
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    header["param.W_E"]["shape"] = [2 * d for d in header["param.W_E"]["shape"]]
    reshaped = safetensors_with_header(json.dumps(header).encode(), blob[8 + header_len :])
    with pytest.raises(ValueError, match="unreadable safetensors tensors"):
        load_checkpoint(reshaped)
    with pytest.raises(ValueError, match="unreadable safetensors tensors"):
        Trainer.from_checkpoint(engine_spec, reshaped)


# ---- the store: the load of a resumed job ---------------------------------------------------


@pytest.fixture
def experiment_id(session) -> str:
    return store.create_experiment(session, tiny_spec(), "cpu").id


def test_verified_load_returns_intact_bytes_and_none_when_missing(session, experiment_id):
    assert store.load_checkpoint_verified(session, experiment_id) is None
    for step in (10, 20):
        store.add_checkpoint(session, experiment_id, step, checkpoint_bytes(b"at %d" % step), {})
    assert store.load_checkpoint_verified(session, experiment_id) == checkpoint_bytes(b"at 20")
    assert store.load_checkpoint_verified(session, experiment_id, 10) == checkpoint_bytes(b"at 10")
    assert store.load_checkpoint_verified(session, experiment_id, 15) is None


def test_verified_load_refuses_bytes_that_fail_their_sha256(session, experiment_id):
    stored = checkpoint_bytes(b"the weights as written")
    store.add_checkpoint(session, experiment_id, STEP, stored, {})
    flipped = checkpoint_bytes(b"the weights as written".replace(b"w", b"W", 1))
    overwrite_checkpoint_bytes(session, experiment_id, STEP, flipped)
    for step in (STEP, None):  # by step, and the latest (what a resumed job reads)
        with pytest.raises(store.CheckpointCorrupt) as refused:
            store.load_checkpoint_verified(session, experiment_id, step)
        message = str(refused.value)
        assert f"step {STEP} of experiment {experiment_id} is corrupt" in message
        assert hashlib.sha256(stored).hexdigest() in message
        assert hashlib.sha256(flipped).hexdigest() in message
        assert refused.value.step == STEP and refused.value.experiment_id == experiment_id


@pytest.mark.parametrize("kind", ["pickle", "garbage header", "another format"])
def test_verified_load_refuses_what_is_not_a_groklab_checkpoint(
    session, experiment_id, marker, kind
):
    store.add_checkpoint(session, experiment_id, STEP, crafted(marker)[kind], {})
    with pytest.raises(store.CheckpointCorrupt, match="corrupt: not a (groklab )?checkpoint"):
        store.load_checkpoint_verified(session, experiment_id)


# ---- the download route ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", CRAFTED)
def test_download_refuses_crafted_checkpoints(client, api_sessions, marker, kind):
    job = client.post(API, json={"name": "x", "preset": "ci-small"}).json()
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], STEP, crafted(marker)[kind], {})
    r = client.get(f"{API}/{job['id']}/checkpoints/{STEP}")
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith(f"checkpoint at step {STEP} of experiment {job['id']}")
    assert "not a" in r.json()["detail"]


def test_download_refuses_bytes_that_fail_their_sha256(client, api_sessions):
    job = client.post(API, json={"name": "x", "preset": "ci-small"}).json()
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], STEP, checkpoint_bytes(b"as written"), {})
        overwrite_checkpoint_bytes(s, job["id"], STEP, checkpoint_bytes(b"as changed"))
    r = client.get(f"{API}/{job['id']}/checkpoints/{STEP}")
    assert r.status_code == 409 and "sha256" in r.json()["detail"]
    assert hashlib.sha256(checkpoint_bytes(b"as written")).hexdigest() in r.json()["detail"]
