"""Phase diagrams of a sweep: where in the grid its members memorised, grokked or neither.

Pure Python, no database: the API hands in the sweep's grid and its members' rows. A cell is one
value of the x axis (and of the y axis, when there is one); it aggregates over every other axis
of the grid (seeds, typically). A member's phase and steps are those of its stored summary (see
service.science.grokking.grokking_summary), written by the worker when the member finishes.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from service.contract.models import FINISHED_STATUSES, PRUNED
from service.science.grokking import (
    PHASE_COMPREHENSION,
    PHASE_CONFUSION,
    PHASE_GROKKING,
    PHASE_MEMORIZATION,
)

PHASES: tuple[str, ...] = (
    PHASE_COMPREHENSION, PHASE_GROKKING, PHASE_MEMORIZATION, PHASE_CONFUSION,
)
# The summary fields a cell takes the median of, and the names of those medians.
MEDIANS: tuple[tuple[str, str], ...] = (
    ("memorization_step", "median_memorization_step"),
    ("generalization_step", "median_generalization_step"),
    ("final_val_acc", "median_final_val_acc"),
)


@dataclass(frozen=True)
class MemberResult:
    """What the diagram needs of one member: its grid point, status and summary."""

    point: dict[str, Any]
    status: str
    summary: dict[str, Any] | None


class AxisInvalid(ValueError):
    """An axis the diagram cannot use; `param` is the query parameter it came from (x or y)."""

    def __init__(self, param: str, value: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.value = value


def _key(value: Any) -> str:
    """A grid value as its JSON, as SweepSpec tells values apart (and lists become hashable)."""
    return json.dumps(value, sort_keys=True)


def check_axes(grid: dict[str, list[Any]], x: str, y: str | None) -> None:
    """AxisInvalid unless x (and y, when given) are two different axes of the grid."""
    allowed = ", ".join(grid)
    for param, axis in (("x", x), ("y", y)):
        if axis is not None and axis not in grid:
            raise AxisInvalid(
                param, axis, f"{param}={axis!r} is not an axis of this sweep; axes: {allowed}"
            )
    if y == x:
        raise AxisInvalid(
            "y", y, f"y must be a different axis from x (both {x!r}); axes: {allowed}"
        )


def grokked(summary: dict[str, Any]) -> bool:
    """Whether a member's run generalised: the summary's own verdict (`grokked`), else its
    phase (grokking, or comprehension: generalising without a delay)."""
    if "grokked" in summary:
        return bool(summary["grokked"])
    return summary.get("phase") in (PHASE_GROKKING, PHASE_COMPREHENSION)


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return statistics.median(numbers) if numbers else None


def cell(x: Any, y: Any, members: list[MemberResult]) -> dict[str, Any]:
    """One cell: member and finished counts, phase counts, grokked fraction and medians over
    the members whose summary has the value (null when none has). A member pruned by the
    sweep's early stopping counts as "pruned", not by the phase it had reached (it did not run
    its budget), and as not generalised in grokked_fraction unless it had."""
    summaries = [m.summary for m in members if m.summary]
    phases = dict.fromkeys(PHASES, 0)
    for member in members:
        phase = PRUNED if member.status == PRUNED else (member.summary or {}).get("phase")
        if isinstance(phase, str):
            phases[phase] = phases.get(phase, 0) + 1
    out: dict[str, Any] = {
        "x": x,
        "y": y,
        "n": len(members),
        "finished": sum(m.status in FINISHED_STATUSES for m in members),
        "phases": phases,
        "grokked_fraction": (
            sum(grokked(s) for s in summaries) / len(summaries) if summaries else None
        ),
    }
    for field, name in MEDIANS:
        out[name] = _median([s.get(field) for s in summaries])
    return out


def phase_diagram(
    grid: dict[str, list[Any]], members: list[MemberResult], x: str, y: str | None = None
) -> dict[str, Any]:
    """The cells over x (and y), in grid order, y varying fastest: `{"x": {"axis", "values"},
    "y": {"axis", "values"} or None, "cells": [...]}`. Raises AxisInvalid for an axis not in
    the grid, or y == x."""
    check_axes(grid, x, y)
    y_values = grid[y] if y is not None else [None]
    groups: dict[tuple[str, str], list[MemberResult]] = {}
    for member in members:
        where = (_key(member.point.get(x)), _key(member.point.get(y)) if y else _key(None))
        groups.setdefault(where, []).append(member)
    cells = [
        cell(xv, yv, groups.get((_key(xv), _key(yv)), []))
        for xv in grid[x]
        for yv in y_values
    ]
    return {
        "x": {"axis": x, "values": grid[x]},
        "y": None if y is None else {"axis": y, "values": grid[y]},
        "cells": cells,
    }


def phase_columns(diagram: dict[str, Any]) -> list[str]:
    """Every phase the diagram's cells count: the known ones first, then any other seen."""
    seen = dict.fromkeys(PHASES)
    for c in diagram["cells"]:
        seen.update(dict.fromkeys(c["phases"]))
    return list(seen)
