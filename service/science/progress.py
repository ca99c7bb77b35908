"""Training speed, measured one way everywhere (the worker's progress, the local CLI's bar, the
engine's summary)."""
from __future__ import annotations

import time
from collections import deque
from typing import Callable


def steps_per_second(steps: int, seconds: float) -> float | None:
    """steps / seconds, or None when no time has passed."""
    return steps / seconds if seconds > 0 else None


class StepRate:
    """Steps per second over the last `window` observations (a recent rate, not the average
    since the start, so a resumed or a slowed-down run shows its current speed)."""

    def __init__(self, window: int = 50, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)

    def observe(self, step: int) -> None:
        self._recent.append((self.clock(), step))

    def rate(self) -> float | None:
        if len(self._recent) < 2:
            return None
        (t0, s0), (t1, s1) = self._recent[0], self._recent[-1]
        return steps_per_second(s1 - s0, t1 - t0)

    def eta_s(self, step: int, total_steps: int) -> float | None:
        rate = self.rate()
        return (total_steps - step) / rate if rate else None
