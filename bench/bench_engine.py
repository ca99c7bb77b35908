"""Engine step time against a plain eager reference, side by side in one process.

    .venv/bin/python bench/bench_engine.py [--rounds 5] [--steps 5] [--cpu-ensemble 8]

Config: Nanda et al. 2023 (x+y mod 113, 30% data, 1-layer transformer d_model 128, d_mlp 512,
full batch, AdamW). The reference is tests/engine/reference.py's ReferenceTransformer (one run,
nn.Linear layers, every position) with torch.optim.AdamW, starting from the same weights.
Rounds alternate reference and engine so that a noisy machine hurts both alike; the medians of
the per-step times are reported.

1. single run on the CPU: reference vs engine (E=1);
2. E=64 ensemble on CUDA, per member, vs the reference single run on CUDA ("skipped: no CUDA");
3. a smaller ensemble on the CPU, per member, vs the reference single run (for information).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from service.contract.spec import spec_from_preset  # noqa: E402
from tests.engine.reference import reference_from_engine  # noqa: E402
from worker.engine.train import Trainer  # noqa: E402


def nanda_spec(ensemble: int, device: str):
    return spec_from_preset(
        "nanda2023", name="bench", ensemble={"size": ensemble},
        training={"device": device, "steps": 1000, "eval_every": 1000},
    )


class ReferenceRun:
    """One eager run: reference module + torch.optim.AdamW, full batch."""

    def __init__(self, trainer: Trainer):
        spec = trainer.spec
        self.model = reference_from_engine(trainer.model, 0, spec)
        opt = spec.optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas)
        )
        self.tokens, self.labels = trainer.sets.train_tokens, trainer.sets.train_labels

    def step(self) -> None:
        loss = F.cross_entropy(self.model(self.tokens), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(step, device: torch.device, n: int) -> list[float]:
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def compare(reference: ReferenceRun, trainer: Trainer, rounds: int, steps: int) -> tuple[float, float, str]:
    """Median seconds per step of (reference, engine), alternating rounds after a warmup, and a
    note with the fastest steps (less sensitive to other load on a shared machine)."""
    device = trainer.device
    step_times(reference.step, device, 2)
    step_times(trainer.train_step, device, 2)
    ref, eng = [], []
    for _ in range(rounds):
        ref += step_times(reference.step, device, steps)
        eng += step_times(trainer.train_step, device, steps)
    note = f"(fastest steps: reference {min(ref) * 1e3:.1f} ms, engine {min(eng) * 1e3:.1f} ms)"
    return statistics.median(ref), statistics.median(eng), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--cpu-ensemble", type=int, default=8)
    parser.add_argument("--cuda-ensemble", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; Nanda 2023 config "
          "(x+y mod 113, 30% data, d_model 128, d_mlp 512, full batch, AdamW)")

    trainer = Trainer(nanda_spec(1, "cpu"))
    ref_s, eng_s, note = compare(ReferenceRun(trainer), trainer, args.rounds, args.steps)
    print(f"single-run step: reference {ref_s * 1e3:.1f} ms, engine {eng_s * 1e3:.1f} ms, "
          f"ratio {ref_s / eng_s:.2f}x {note}")

    E = args.cuda_ensemble
    if torch.cuda.is_available():
        trainer = Trainer(nanda_spec(E, "cuda"))
        single = Trainer(nanda_spec(1, "cuda"))
        ref_s, eng_s, _ = compare(ReferenceRun(single), trainer, args.rounds, args.steps)
        print(f"E={E} ensemble on CUDA ({torch.cuda.get_device_name()}): reference single run "
              f"{ref_s * 1e3:.2f} ms/step, engine {eng_s * 1e3:.2f} ms/step for {E} members = "
              f"{eng_s / E * 1e3:.3f} ms per member-step, ratio {ref_s / (eng_s / E):.1f}x")
    else:
        print(f"E={E} ensemble on CUDA: skipped: no CUDA")

    E = args.cpu_ensemble
    trainer = Trainer(nanda_spec(E, "cpu"))
    single = Trainer(nanda_spec(1, "cpu"))
    ref_s, eng_s, _ = compare(ReferenceRun(single), trainer, max(1, args.rounds // 2), max(1, args.steps // 2))
    print(f"E={E} ensemble on CPU: reference single run {ref_s * 1e3:.1f} ms/step, engine "
          f"{eng_s * 1e3:.1f} ms/step for {E} members = {eng_s / E * 1e3:.1f} ms per member-step, "
          f"ratio {ref_s / (eng_s / E):.2f}x")


if __name__ == "__main__":
    main()
