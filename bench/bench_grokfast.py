"""Grokfast's claim (Lee et al. 2024) on this engine: the grokfast2024 preset (their setting,
the EMA gradient filter) against the same spec without the filter, side by side in one process:
steps to val acc 0.95 and 0.99 of each and their ratios (the paper: 39890 / 910 = ~44x to 95%
on x*y mod 97).

    .venv/bin/python bench/bench_grokfast.py [--seed 0] [--max-steps 3000] [--plain-steps 20000]
                                             [--init pytorch|normal] [--plain-weight-decay WD]

Each run stops once it has grokked (stop_on_grok), the filtered one within --max-steps, the
unfiltered one within --plain-steps. --init sets model.init for both (default: the preset's);
--plain-weight-decay gives the unfiltered run its own weight decay (default: the preset's; Lee
et al.'s baseline command runs main.py's default, 0). Prints pass or FAIL against the claim
"the filtered run generalises in at most half the steps" (a ratio >= 2 at 0.99), whatever the
outcome; a run that never got there counts at its budget, as a lower bound.
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
THRESHOLDS = (0.95, 0.99)


def run(steps: int, seed: int, filtered: bool, init: str | None, weight_decay: float | None) -> dict:
    """The run's first steps at val acc >= each threshold (None: not within steps), its
    memorisation step and its wall time."""
    optimizer = {} if filtered else {"grad_filter": None}
    if weight_decay is not None:
        optimizer["weight_decay"] = weight_decay
    spec = spec_from_preset(
        "grokfast2024", analysis={"every": None}, optimizer=optimizer,
        model={} if init is None else {"init": init},
        training={"device": "cpu", "steps": steps, "seed": seed, "eval_every": EVAL_EVERY,
                  "checkpoint_every": 10**6, "stop_on_grok": True},
    )
    reached: dict[float, int | None] = dict.fromkeys(THRESHOLDS)

    def on_metrics(rows: list[dict]) -> None:
        for row in rows:
            for threshold in THRESHOLDS:
                if row["name"] == "val_acc" and row["value"] >= threshold and reached[threshold] is None:
                    reached[threshold] = row["step"]

    started = time.perf_counter()
    member = Trainer(spec).run(on_metrics=on_metrics)["members"][0]
    return {"memorised": member["memorization_step"], "reached": reached, "budget": steps,
            "wall_s": time.perf_counter() - started}


def describe(name: str, result: dict) -> str:
    steps = ", ".join(f"val acc {t} at {s if s is not None else '> ' + str(result['budget'])}"
                      for t, s in result["reached"].items())
    return f"{name}: memorised at {result['memorised']}, {steps} ({result['wall_s']:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--plain-steps", type=int, default=20000)
    parser.add_argument("--init", choices=["normal", "pytorch"], default=None)
    parser.add_argument("--plain-weight-decay", type=float, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    filtered = run(args.max_steps, args.seed, True, args.init, None)
    print(describe("filtered (grokfast2024)", filtered), flush=True)
    if filtered["reached"][0.99] is None:
        print(f"FAIL: the filtered run did not generalise within {args.max_steps} steps")
        return
    plain = run(args.plain_steps, args.seed, False, args.init, args.plain_weight_decay)
    print(describe("unfiltered (same spec, no filter)", plain), flush=True)
    for threshold in THRESHOLDS:
        s_f, s_p = filtered["reached"][threshold], plain["reached"][threshold]
        ratio = (s_p if s_p is not None else plain["budget"]) / s_f
        bound = ">= " if s_p is None else ""
        line = f"ratio unfiltered / filtered steps to val acc {threshold}: {bound}{ratio:.2f}"
        if threshold == 0.99:
            line += f" (claim >= 2: {'pass' if ratio >= 2 else 'FAIL'})"
        print(line + (" (paper ~44)" if threshold == 0.95 else ""))


if __name__ == "__main__":
    main()
