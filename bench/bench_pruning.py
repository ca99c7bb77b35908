"""Early stopping on grokking grids: grokking_aware against ASHA on val_acc, replayed on grids
trained fully once.

    nice -n 10 .venv/bin/python bench/pruning_grids.py --grid tuning     # once per grid (minutes)
    nice -n 10 .venv/bin/python bench/pruning_grids.py --grid heldout
    nice -n 10 .venv/bin/python bench/pruning_grids.py --grid subtraction
    .venv/bin/python bench/bench_pruning.py [--grid tuning] [--grid heldout] [--grid subtraction]

Replay design: pack members train independently (a member's run does not depend on the others
in its pack), so each grid is trained ONCE to its full budget with no pruning
(bench/pruning_grids.py records every member's evaluations), and each policy is replayed on the
recording: at a check step s a policy sees each member's series up to s only (the same
service.science.pruning functions the worker calls live), and a pruned member's remaining steps
count as saved. The ground truth "groks" is val acc >= 0.99 within the budget
(service/science/grokking.py).

Per policy: the share of member-steps saved, the share of the ground truth's grokking members it
kept (recall), and the members it got wrong (grokkers pruned; non-grokkers kept to the end).
ASHA on val_acc is run at every keep_fraction of a ladder and checks every 50, 100 or 200
steps; "at equal savings" is its best recall among the settings that save at least as much as
grokking_aware (the comparison most favourable to it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.science.grokking import ACC_THRESHOLD, VAL_ACC, clean_series, first_step_reaching  # noqa: E402
from service.science.pruning import EarlyStoppingSpec, replay  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GOAL_SAVED, GOAL_RECALL = 0.40, 0.95
GROKKING_AWARE = EarlyStoppingSpec(policy="grokking_aware", after="memorization", check_every=50)
# ASHA's settings tried: every keep_fraction at checks every 50, 100 and 200 steps.
ASHA_KEEP = (0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.85, 0.8, 0.7, 0.5)
ASHA_EVERY = (50, 100, 200)


def asha(keep_fraction: float, check_every: int) -> EarlyStoppingSpec:
    return EarlyStoppingSpec(policy="asha", metric="val_acc", after="memorization",
                             check_every=check_every, keep_fraction=keep_fraction)


def evaluate(es: EarlyStoppingSpec, members: list[dict], budget: int) -> dict:
    """Saved share of member-steps, recall of the grokkers, and the members it got wrong."""
    series = [m["series"] for m in members]
    fates = replay(es, series, budget)
    groks = [first_step_reaching(clean_series(s[VAL_ACC]), ACC_THRESHOLD) for s in series]
    used = sum(f["pruned_at"] if f["pruned_at"] is not None else budget for f in fates)
    grokkers = [i for i, g in enumerate(groks) if g is not None]
    missed = [i for i in grokkers if fates[i]["pruned_at"] is not None]
    wasted = [i for i, g in enumerate(groks) if g is None and fates[i]["pruned_at"] is None]
    return {
        "saved": 1 - used / (budget * len(members)),
        "recall": (len(grokkers) - len(missed)) / len(grokkers) if grokkers else 1.0,
        "n_grokkers": len(grokkers),
        "missed": [(members[i]["point"], groks[i], fates[i]) for i in missed],
        "wasted": [members[i]["point"] for i in wasted],
        "pruned": sum(f["pruned_at"] is not None for f in fates),
    }


def short(point: dict) -> str:
    names = {"optimizer.weight_decay": "wd", "task.train_fraction": "frac", "optimizer.lr": "lr",
             "training.seed": "seed", "model.init_scale": "init"}
    return " ".join(f"{names.get(k, k)}={v}" for k, v in point.items())


def report(name: str, recording: dict) -> dict:
    members, budget = recording["members"], recording["steps"]
    grid = recording["grid"]
    print(f"\n== grid {name}: {grid['base'].get('task', {})} {grid['base'].get('model', {})}, "
          f"{len(members)} members over {', '.join(grid['grid'])}, {budget} steps each "
          f"(recorded in {recording['wall_s'] / 60:.0f} min)")
    ga = evaluate(GROKKING_AWARE, members, budget)
    print(f"ground truth: {ga['n_grokkers']} of {len(members)} reach val acc {ACC_THRESHOLD} within {budget} steps")
    print(f"grokking_aware (after memorization, check every 50, threshold 0.5): saved {ga['saved']:.1%} "
          f"of member-steps, recall {ga['recall']:.1%} ({ga['pruned']} pruned)")
    for point, grok_step, fate in ga["missed"]:
        print(f"   pruned a grokker: {short(point)} (groks at {grok_step}) at step {fate['pruned_at']}: "
              f"{fate['reason']}")
    for point in ga["wasted"]:
        print(f"   kept a non-grokker to the end: {short(point)}")
    ladder = [((keep, every), evaluate(asha(keep, every), members, budget))
              for every in ASHA_EVERY for keep in ASHA_KEEP]
    for every in ASHA_EVERY:
        print(f"asha val_acc, checks every {every}: " + "; ".join(
            f"keep {k:.2f}: saved {r['saved']:.0%} recall {r['recall']:.0%}"
            for (k, e), r in ladder if e == every))
    # The comparison most favourable to ASHA: its best recall among the settings that save at
    # least as much as grokking_aware (and, beside it, the setting closest in savings).
    at_least = [(kc, r) for kc, r in ladder if r["saved"] >= ga["saved"] - 1e-9]
    (keep, every), equal = max(at_least, key=lambda kr: (kr[1]["recall"], kr[1]["saved"])) if at_least else (
        (None, None), None)
    (c_keep, c_every), closest = min(ladder, key=lambda kr: abs(kr[1]["saved"] - ga["saved"]))
    print(f"closest in savings: asha keep {c_keep:.2f} every {c_every}: saved {closest['saved']:.1%}, "
          f"recall {closest['recall']:.1%}")
    if equal is None:
        print("no asha setting saves as much as grokking_aware")
    else:
        print(f"at equal savings (asha's best recall among settings saving >= {ga['saved']:.1%}): "
              f"grokking_aware recall {ga['recall']:.1%}; asha (keep {keep:.2f}, every {every}) recall "
              f"{equal['recall']:.1%} at {equal['saved']:.1%} saved")
        for point, grok_step, fate in equal["missed"]:
            print(f"   asha pruned a grokker: {short(point)} (groks at {grok_step}) at step {fate['pruned_at']}")
    met = ga["saved"] >= GOAL_SAVED and ga["recall"] >= GOAL_RECALL
    verdict = "met" if met else (
        f"NOT met: saved {ga['saved']:.1%} (goal {GOAL_SAVED:.0%}, short by "
        f"{100 * max(0.0, GOAL_SAVED - ga['saved']):.1f} points), recall {ga['recall']:.1%} (goal "
        f"{GOAL_RECALL:.0%}, short by {100 * max(0.0, GOAL_RECALL - ga['recall']):.1f} points)")
    beats = "no asha setting saves as much" if equal is None else (
        "yes" if ga["recall"] > equal["recall"] else "no")
    print(f"goal (saved >= {GOAL_SAVED:.0%}, recall >= {GOAL_RECALL:.0%}): {verdict}; beats asha on recall at "
          f"equal savings: {beats}")
    return {"grokking_aware": ga, "asha_equal": (keep, equal)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", action="append", choices=("tuning", "heldout", "subtraction"))
    args = parser.parse_args()
    print(__doc__.split("\n\n")[2].replace("\n", " "))
    for name in args.grid or ["tuning", "heldout", "subtraction"]:
        path = RESULTS / f"pruning-{name}.json"
        if not path.exists():
            print(f"\n== grid {name}: no recording at {path}; run bench/pruning_grids.py --grid {name}")
            continue
        report(name, json.loads(path.read_text()))


if __name__ == "__main__":
    main()
