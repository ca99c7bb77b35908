"""Grokfast's claim (Lee et al. 2024) on this engine: the grokfast2024 preset (their setting,
the EMA gradient filter) against the same spec without the filter, side by side in one process:
steps to val acc 0.99 of each and their ratio (the paper: ~44x on x*y mod 97).

    .venv/bin/python bench/bench_grokfast.py [--k 2] [--seed 0]

The filtered run stops once it has grokked; the unfiltered one gets k times the filtered run's
steps to generalisation. Prints pass or FAIL against the claim "the filtered run generalises in
at most half the steps" (a ratio >= 2), whatever the outcome.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from service.contract.spec import spec_from_preset  # noqa: E402
from worker.engine.train import Trainer  # noqa: E402

EVAL_EVERY = 50


def run(steps: int, seed: int, filtered: bool) -> tuple[dict, float]:
    overrides = {} if filtered else {"optimizer": {"grad_filter": None}}
    spec = spec_from_preset(
        "grokfast2024", analysis={"every": None},
        training={"device": "cpu", "steps": steps, "seed": seed, "eval_every": EVAL_EVERY,
                  "checkpoint_every": 10**6, "stop_on_grok": filtered},
        **overrides,
    )
    started = time.perf_counter()
    summary = Trainer(spec).run()
    return summary["members"][0], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    filtered, f_s = run(args.max_steps, args.seed, filtered=True)
    s_f = filtered["generalization_step"]
    print(f"filtered (grokfast2024): memorised at {filtered['memorization_step']}, val acc 0.99 at "
          f"{s_f} ({f_s:.0f} s)")
    if s_f is None:
        print(f"FAIL: the filtered run did not generalise within {args.max_steps} steps")
        return
    budget = -(-args.k * s_f // EVAL_EVERY) * EVAL_EVERY
    plain, p_s = run(budget, args.seed, filtered=False)
    s_p = plain["generalization_step"]
    print(f"unfiltered (same spec, no filter): memorised at {plain['memorization_step']}, val acc "
          f"0.99 at {s_p if s_p is not None else f'> {budget}'} ({p_s:.0f} s)")
    ratio = (s_p if s_p is not None else budget) / s_f
    verdict = "pass" if ratio >= 2 else "FAIL"
    print(f"ratio unfiltered / filtered steps to val acc 0.99: {'>= ' if s_p is None else ''}"
          f"{ratio:.2f} (paper ~44; claim >= 2: {verdict})")


if __name__ == "__main__":
    main()
