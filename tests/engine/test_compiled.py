"""torch.compile of the training forward (worker/engine/compiled.py): an execution option that
trains what eager trains, keeps the checkpoint names, and is on by default only on CUDA."""
from __future__ import annotations

import pytest
import torch

from service.contract.settings import Settings
from worker.engine.compiled import compile_wanted
from worker.engine.train import Trainer

# Inductor on a 2-core CPU compiles for about a minute; aot_eager traces the same forward and
# backward graphs (AOTAutograd) and runs them with the eager kernels, in seconds.
BACKEND = "aot_eager"


def series(rows: list[dict], member: int) -> dict[tuple[int, str], float]:
    return {(r["step"], r["name"]): r["value"] for r in rows if r["member"] == member}


def test_a_compiled_pack_trains_like_eager_and_compiles_again_when_it_shrinks(tiny_spec):
    specs = [tiny_spec(training={"seed": i, "steps": 6, "eval_every": 2, "checkpoint_every": 6}) for i in range(2)]
    runs = {}
    for compiled in (False, BACKEND):
        trainer = Trainer.for_members(specs, compile_model=compiled)
        rows, checkpoints = [], {}
        trainer.run(on_metrics=rows.extend, on_checkpoint=lambda s, b, m: checkpoints.update({(s, m["member"]): b}),
                    members_to_stop=lambda: {0: "cancelled"} if trainer.step >= 3 else {})
        assert trainer.n_members == 1 and trainer.step == 6  # member 0 left at step 3, the pack shrank
        runs[compiled] = rows, checkpoints, trainer
    (eager_rows, _, _), (rows, checkpoints, trainer) = runs[False], runs[BACKEND]
    for member in (0, 1):
        mine, theirs = series(rows, member), series(eager_rows, member)
        assert mine.keys() == theirs.keys() and max(k[0] for k in mine) == (3 if member == 0 else 6)
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (member, key)
    # The module is not wrapped: its parameter names, and so its checkpoints, are eager's.
    assert trainer._train_forward is not trainer.model
    assert all(not name.startswith("_orig_mod") for name, _ in trainer.model.named_parameters())
    alone = Trainer.from_checkpoint(specs[1], checkpoints[(6, 1)])
    assert alone.step == 6 and torch.equal(alone.model.W_E, trainer.model.W_E.cpu())


def test_the_setting_compiles_on_cuda_by_default_and_refuses_other_words(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Settings().torch_compile == "auto"
    assert (compile_wanted("auto", cuda), compile_wanted("auto", cpu)) == (True, False)
    assert (compile_wanted("on", cpu), compile_wanted("off", cuda)) == (True, False)
    with pytest.raises(ValueError, match="one of auto, on, off"):
        compile_wanted("yes", cpu)
    monkeypatch.setenv("GROKLAB_TORCH_COMPILE", "always")
    with pytest.raises(ValueError, match="torch_compile"):
        Settings()
