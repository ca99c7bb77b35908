"""The job clock: where a job's wall time goes, phase by phase (worker/timing.py)."""
from __future__ import annotations

from worker.timing import PHASES, JobClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Worker:
    def __init__(self, t: FakeTime) -> None:
        self.t = t

    def train_step(self) -> str:
        self.t.now += 2.0
        return "stepped"

    def evaluate(self) -> list:
        self.t.now += 0.5
        return []

    def member_checkpoints(self, members=None) -> dict:
        self.t.now += 0.25
        return {0: b"x"}


def test_phases_add_up_to_the_wall_time_and_nested_calls_count_once():
    t = FakeTime()
    clock = JobClock(clock=t)
    trainer = Worker(t)
    clock.instrument(trainer)
    with clock.phase("setup"):
        t.now += 1.0
    for _ in range(3):
        assert trainer.train_step() == "stepped"  # the wrapped method still returns its value
    trainer.evaluate()
    store = clock.timed("checkpoints", lambda step, blob: None)

    def record(rows):  # a recording call that evaluates inside: counted once, as recording
        t.now += 0.1
        trainer.evaluate()

    clock.timed("recording", record)([])
    trainer.member_checkpoints()
    store(1, b"x")
    t.now += 0.15  # the loop itself
    r = clock.report()
    assert r["setup"] == 1.0 and r["steps"] == 6.0 and r["evaluate"] == 0.5
    assert r["recording"] == 0.6 and r["checkpoints"] == 0.25
    assert r["other"] == 0.15 and r["wall"] == 8.5
    assert sum(r[name] for name in PHASES) + r["other"] == r["wall"]
    line = clock.describe()
    assert line.startswith("8.5 s: setup 1.0 s (12%), steps 6.0 s (71%)")
    assert "analysis" not in line  # phases that took no time are left out


def test_a_missing_callback_stays_missing():
    assert JobClock().timed("analysis", None) is None
