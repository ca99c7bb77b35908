"""Sweep packing: members trained together as one pack (Trainer.for_members) against the same
runs one after another, side by side in one process.

    .venv/bin/python bench/bench_sweep.py [--steps 200] [--members 8] [--rounds 2]

(a) CPU: an 8-member ci-small pack (different seeds and weight decays, 200 steps with the
    preset's evaluations) against the 8 single runs one after another: ms per member-step and
    the ratio sequential / packed (>= 1: packing wins). Rounds alternate the two.
(b) CUDA (skipped with a line when there is none): the nanda2023 config (p=113, 1 layer,
    d_model 128, full batch) packed at E in {1, 64, 256}: time per run-step (pack step / E)
    against the eager single-run reference (tests/engine/reference.py + torch.optim.AdamW) on
    the same device, as ratios, and peak memory per member.
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

from service.contract.spec import ExperimentSpec, spec_from_preset  # noqa: E402
from worker.engine.train import Trainer  # noqa: E402

WEIGHT_DECAYS = (0.0, 0.1, 0.3, 1.0)


def member_specs(preset: str, n: int, device: str, **overrides) -> list[ExperimentSpec]:
    return [
        spec_from_preset(
            preset, name=f"m{i}", analysis={"every": None},
            training={"device": device, "seed": i, **overrides.get("training", {})},
            optimizer={"weight_decay": WEIGHT_DECAYS[i % len(WEIGHT_DECAYS)]},
        )
        for i in range(n)
    ]


def cpu_pack_vs_sequential(n: int, steps: int, rounds: int) -> None:
    specs = member_specs("ci-small", n, "cpu", training={"steps": steps})
    packed, sequential = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for spec in specs:
            Trainer(spec).run()
        sequential.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Trainer.for_members(specs).run()
        packed.append(time.perf_counter() - t0)
    seq, pack = statistics.median(sequential), statistics.median(packed)
    member_steps = n * steps
    print(f"(a) CPU, ci-small x{n} ({steps} steps, evals every 50): sequential "
          f"{seq / member_steps * 1e3:.2f} ms per member-step, packed {pack / member_steps * 1e3:.2f} ms "
          f"per member-step, ratio sequential/packed {seq / pack:.2f}x "
          f"(rounds: sequential {', '.join(f'{s:.1f}' for s in sequential)} s; "
          f"packed {', '.join(f'{s:.1f}' for s in packed)} s)")


def cuda_packs(sizes: list[int], steps: int) -> None:
    from bench.sweep_gpu import measure_packs

    print(f"(b) CUDA {torch.cuda.get_device_name()}, nanda2023 full batch, per run-step against the "
          "eager single run (bench/sweep_gpu.py; bench/gpu_check.sh runs all the GPU checks):")
    figures = measure_packs("cuda", sizes, steps)
    print("    eager reference: " + ", ".join(f"{p} {ms:.2f} ms per step" for p, ms in figures["reference_ms"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cuda-sizes", default="1,64,256")
    parser.add_argument("--cuda-steps", type=int, default=20)
    parser.add_argument("--service", action="store_true",
                        help="only the 12-member sweep through `groklab up` vs `groklab train` (bench/sweep_service.py)")
    parser.add_argument("--scaling", action="store_true",
                        help="only the 4-member sweep on C = 1 and 2 cores (taskset) vs one thread")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.scaling:
        from bench.sweep_service import scaling

        scaling()
        return
    if args.service:
        from bench.sweep_service import main as service_sweep

        service_sweep()
        return
    cpu_pack_vs_sequential(args.members, args.steps, args.rounds)
    if torch.cuda.is_available():
        cuda_packs([int(x) for x in args.cuda_sizes.split(",")], args.cuda_steps)
    else:
        print("(b) CUDA packs (nanda2023, E in 1/64/256): skipped: no CUDA")


if __name__ == "__main__":
    main()
