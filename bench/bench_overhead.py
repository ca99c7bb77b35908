"""What the service adds to a training run, as ratios against a plain engine run.

    .venv/bin/python bench/bench_overhead.py [--steps 400] [--rounds 3]

Config: Nanda et al. 2023 (x+y mod 113, 1-layer transformer, full batch), eval_every 100.

1. recording: Trainer.run with the worker's Recorder writing metrics, progress, heartbeat polls
   and checkpoints to a real SQLite database, against Trainer.run with no callbacks.
   Goal: under 3% slower.
2. analysis: the Fourier progress measures at the default analysis.every (1000 steps): the cost
   of one analysis call against 1000 training steps. Goal: under 5%.

Rounds alternate the variants, so that a noisy machine hurts both alike; medians are reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service import store  # noqa: E402
from service.contract.spec import spec_from_preset  # noqa: E402
from service.infra.db import make_engine, make_sessionmaker, migrate  # noqa: E402
from worker.engine.train import Trainer  # noqa: E402
from worker.recorder import JobRecorder  # noqa: E402
from worker.analysis.callback import analysis_callback  # noqa: E402


def plain_run(spec) -> float:
    trainer = Trainer(spec)
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start


def recorded_run(spec, sessions) -> float:
    with sessions() as s:
        exp = store.create_experiment(s, spec, "cpu")
        exp = store.claim_experiment(s, exp.id, "bench")
    recorder = JobRecorder(sessions, [(exp.id, exp.attempt)])
    trainer = Trainer(spec)
    start = time.perf_counter()
    trainer.run(
        on_metrics=recorder.on_metrics, on_checkpoint=recorder.on_checkpoint,
        should_stop=recorder.should_stop, on_progress=recorder.on_progress,
        members_to_stop=recorder.members_to_stop, on_member_left=recorder.on_member_left,
    )
    recorder.flush()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    spec = spec_from_preset(
        "nanda2023", name="bench-overhead", analysis={"every": None},
        training={"steps": args.steps, "eval_every": 100, "checkpoint_every": args.steps // 2, "device": "cpu"},
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        sessions = make_sessionmaker(make_engine(url))
        plain, recorded = [], []
        for _ in range(args.rounds):
            plain.append(plain_run(spec))
            recorded.append(recorded_run(spec, sessions))
    p, r = statistics.median(plain), statistics.median(recorded)
    print(f"recording: plain {p / args.steps * 1e3:.1f} ms/step, with recorder "
          f"{r / args.steps * 1e3:.1f} ms/step, overhead {100 * (r / p - 1):+.2f}% (goal < 3%)")

    # Analysis: one call's cost against analysis.every training steps.
    every = spec_from_preset("nanda2023").analysis.every
    analysed = spec_from_preset("nanda2023", analysis={"every": every}, training={"device": "cpu"})
    trainer = Trainer(analysed)
    on_analysis = analysis_callback(analysed)
    step_times, analysis_times = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(20):
            trainer.train_step()
        step_times.append((time.perf_counter() - start) / 20)
        start = time.perf_counter()
        on_analysis(trainer, trainer.step)
        analysis_times.append(time.perf_counter() - start)
    t_step, t_analysis = statistics.median(step_times), statistics.median(analysis_times)
    print(f"analysis: one call {t_analysis * 1e3:.0f} ms, training step {t_step * 1e3:.1f} ms, "
          f"every {every} steps -> overhead {100 * t_analysis / (every * t_step):.2f}% (goal < 5%)")


if __name__ == "__main__":
    main()
