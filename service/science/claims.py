"""A paper's claim, written as data, and its verdict on a sweep's member summaries. Pure Python.

A claim (a reproduction's `claims` entry, reproductions/*.yaml) names a metric of the members'
summaries, which members it is about (by their grid point), a statistic over them and what the
paper says it is:

- `value`: statistic(metric of `members`) op value.
    `{kind: value, members: {optimizer.loss: stablemax}, metric: generalization_step,
      statistic: fraction_reached, op: "==", value: 1}`: every such member generalised.
- `ratio`: median(metric of `numerator`) / median(metric of `denominator`) op value.
- `trend`: the median of metric at each value of `axis`, in increasing order of the axis, falls
  (`direction: decreasing`) or rises from one value to the next.
- `order`: the medians of the step `metrics` of `members`, in the order given, each op (< or
  <=) the next: `{kind: order, metrics: [restricted_loss_fall_step, test_loss_fall_step],
  op: "<"}`: the restricted loss falls before the test loss.

The progress metrics (circuit_formation_step, cleanup_step, the loss fall steps,
excluded_loss_rise, key_freq_count) are those of a run whose analysis recorded the progress
measures (service.science.phases.progress_summary).

A step metric (memorization_step, generalization_step and their _95 variants) that a finished
member never reached is **censored**: the member ran `last_step` steps without reaching it, so
its value is only known to be above that. A median that lands on a censored value is a lower
bound ("> 2000"), and so is a ratio over it; a lower bound passes `>` and `>=` when it already
clears the value, and never passes `<` or `<=`. A claim that cannot be measured (no member
selected, a member failed) fails and says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STEP_METRICS = (
    "memorization_step", "generalization_step", "memorization_step_95", "generalization_step_95",
    "circuit_formation_step", "cleanup_step", "restricted_loss_fall_step", "test_loss_fall_step",
)
METRICS = STEP_METRICS + (
    "final_val_acc", "final_train_acc", "grokking_delay", "excluded_loss_rise", "key_freq_count",
)
OPS = ("<", "<=", ">", ">=", "==")
# "$first" / "$last" in a selector: the axis' first / last value in the scale's grid (the grids
# of both scales differ in their values, the claims do not).
EXTREMES = ("$first", "$last")

Metric = Literal[METRICS]  # type: ignore[valid-type]
Op = Literal[OPS]  # type: ignore[valid-type]


class Claim(BaseModel):
    """One claim of a paper, checkable on a finished sweep."""

    model_config = ConfigDict(extra="forbid")

    says: str = Field(min_length=1, description="The claim in words.")
    kind: Literal["value", "ratio", "trend", "order"]
    metric: Metric | None = Field(None, description="Every kind but order.")
    metrics: list[Metric] | None = Field(None, description="Step metrics, in order (order).")
    statistic: Literal["median", "min", "max", "fraction_reached"] = Field(
        "median", description="Over the selected members (kind value); fraction_reached: the "
        "fraction whose step metric is not null.")
    members: dict[str, Any] = Field(default_factory=dict, description="Grid point selector (value).")
    numerator: dict[str, Any] | None = None
    denominator: dict[str, Any] | None = None
    axis: str | None = Field(None, description="Grid axis (trend).")
    direction: Literal["decreasing", "increasing"] | None = None
    op: Op | None = None
    value: float | dict[str, float] | None = Field(
        None, description="What the paper says; one per scale ({ci: 3, paper: 20}) or one for all.")
    paper: str | None = Field(None, description="The paper's own figure, for the report.")

    @model_validator(mode="after")
    def _check_kind(self) -> "Claim":
        if self.kind == "order":
            steps = [m for m in self.metrics or [] if m in STEP_METRICS]
            if self.metrics is None or len(self.metrics) < 2 or len(steps) < len(self.metrics):
                raise ValueError(f"an order claim needs metrics: two or more of {', '.join(STEP_METRICS)}")
            if self.op not in ("<", "<=") or self.metric is not None:
                raise ValueError("an order claim needs op < or <= and metrics, not metric")
            return self
        if self.metric is None or self.metrics is not None:
            raise ValueError(f"a {self.kind} claim needs metric, not metrics")
        if self.kind in ("value", "ratio") and (self.op is None or self.value is None):
            raise ValueError(f"a {self.kind} claim needs op and value")
        if self.kind == "ratio" and (self.numerator is None or self.denominator is None):
            raise ValueError("a ratio claim needs numerator and denominator selectors")
        if self.kind == "ratio" and self.metric not in STEP_METRICS:
            raise ValueError(f"a ratio claim compares steps: metric one of {', '.join(STEP_METRICS)}")
        if self.statistic == "fraction_reached" and self.metric not in STEP_METRICS:
            raise ValueError(f"fraction_reached is for step metrics: {', '.join(STEP_METRICS)}")
        if self.kind == "trend" and (self.axis is None or self.direction is None):
            raise ValueError("a trend claim needs axis and direction")
        return self

    def selectors(self) -> list[dict[str, Any]]:
        if self.kind == "ratio":
            return [self.numerator or {}, self.denominator or {}]
        return [self.members]

    def expected_value(self, scale: str) -> float | None:
        if isinstance(self.value, dict):
            return self.value.get(scale)
        return self.value


@dataclass(frozen=True)
class Measure:
    """A measured number; exact False: only a lower bound (the true value is above it)."""

    value: float
    exact: bool = True

    def __str__(self) -> str:
        text = f"{self.value:.4g}"
        return text if self.exact else f"> {text}"


class NotMeasurable(ValueError):
    """The claim cannot be measured on these members (said in the report's `measured`)."""


def selector_text(where: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_json(v)}" for k, v in where.items()) or "all members"


def _json(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_json(v)}" for k, v in value.items()) + "}"
    return str(value)


def resolve(where: dict[str, Any], grid: dict[str, list]) -> dict[str, Any]:
    """where with "$first"/"$last" replaced by the grid's first or last value of that axis."""
    return {axis: grid[axis][0 if value == "$first" else -1] if value in EXTREMES else value
            for axis, value in where.items()}


def select(members: list[dict], where: dict[str, Any], grid: dict[str, list]) -> list[dict]:
    """The members whose point matches every axis of where (resolved on the grid)."""
    wanted = resolve(where, grid)
    return [m for m in members if all(m["point"].get(a) == v for a, v in wanted.items())]


def member_measure(member: dict, metric: str) -> Measure | None:
    """The member's metric; a step it never reached is censored at its last step; None: no
    summary value at all (an accuracy never evaluated)."""
    if member.get("status") != "succeeded":
        raise NotMeasurable(f"member {member.get('index')} {member.get('status')}")
    summary = member.get("summary") or {}
    value = summary.get(metric)
    if value is not None:
        return Measure(float(value))
    if metric in STEP_METRICS and summary.get("last_step") is not None:
        return Measure(float(summary["last_step"]), exact=False)
    return None


def _rank(m: Measure) -> tuple[float, float]:
    return (math.inf, m.value) if not m.exact else (m.value, 0.0)


def median(measures: list[Measure]) -> Measure:
    """The median; a censored value sorts above every exact one (members share a budget)."""
    if not measures:
        raise NotMeasurable("no member to take the median of")
    ordered = sorted(measures, key=_rank)
    n = len(ordered)
    lo, hi = ordered[(n - 1) // 2], ordered[n // 2]
    return Measure((lo.value + hi.value) / 2, exact=lo.exact and hi.exact)


def statistic(name: str, measures: list[Measure]) -> Measure:
    if not measures:
        raise NotMeasurable("no member selected")
    if name == "fraction_reached":
        return Measure(sum(m.exact for m in measures) / len(measures))
    if name == "median":
        return median(measures)
    ordered = sorted(measures, key=_rank)
    return ordered[0] if name == "min" else ordered[-1]


def compare(measured: Measure, op: str, value: float) -> bool:
    """measured op value; a lower bound passes only > and >= that it already clears."""
    if not measured.exact:
        return op in (">", ">=") and measured.value >= value
    x = measured.value
    return {"<": x < value, "<=": x <= value, ">": x > value, ">=": x >= value,
            "==": math.isclose(x, value, rel_tol=1e-9, abs_tol=1e-12)}[op]


def _measures(members: list[dict], metric: str) -> list[Measure]:
    out = []
    for m in members:
        measure = member_measure(m, metric)
        if measure is None:
            raise NotMeasurable(f"member {m.get('index')} has no {metric}")
        out.append(measure)
    return out


def expected_text(claim: Claim, scale: str) -> str:
    value = claim.expected_value(scale)
    if claim.kind == "value":
        return f"{claim.statistic} {claim.metric} of [{selector_text(claim.members)}] {claim.op} {value:g}"
    if claim.kind == "ratio":
        return (f"median {claim.metric} of [{selector_text(claim.numerator or {})}] / median "
                f"{claim.metric} of [{selector_text(claim.denominator or {})}] {claim.op} {value:g}")
    if claim.kind == "order":
        return f" {claim.op} ".join(f"median {m}" for m in claim.metrics or []) + (
            f" of [{selector_text(claim.members)}]")
    return f"median {claim.metric} is {claim.direction} in {claim.axis}"


def _order(claim: Claim, members: list[dict], grid: dict[str, list]) -> tuple[bool, str, dict]:
    """Every median exact (a step that was reached) and each op the next."""
    chosen = select(members, claim.members, grid)
    medians = {m: median(_measures(chosen, m)) for m in claim.metrics or []}
    values = list(medians.values())
    ok = all(m.exact for m in values) and all(
        compare(before, str(claim.op), after.value) for before, after in zip(values, values[1:]))
    measured = ", ".join(f"{k}: {v}" for k, v in medians.items())
    return ok, measured, {k: {"value": v.value, "exact": v.exact} for k, v in medians.items()}


def _trend(claim: Claim, members: list[dict], grid: dict[str, list]) -> tuple[bool, str, dict]:
    axis = str(claim.axis)
    by_value = {}
    for value in sorted(grid[axis]):
        chosen = select(members, {**claim.members, axis: value}, grid)
        by_value[value] = median(_measures(chosen, claim.metric))
    medians = list(by_value.values())
    exact = [m for m in medians if m.exact]
    sign = 1 if claim.direction == "decreasing" else -1
    ok = len(exact) >= 2
    for before, after in zip(medians, medians[1:]):
        if before.exact and after.exact:
            ok = ok and sign * (before.value - after.value) > 0
        elif before.exact != after.exact:
            # A censored median lies above every exact one: it may only come first when falling.
            ok = ok and (before.exact is (sign < 0))
    measured = ", ".join(f"{k}: {v}" for k, v in by_value.items())
    return ok, measured, {str(k): {"value": v.value, "exact": v.exact} for k, v in by_value.items()}


def evaluate_claim(claim: Claim, members: list[dict], grid: dict[str, list], scale: str) -> dict:
    """{says, expected, measured, verdict: pass|fail, paper, values} for one claim."""
    report = {"says": claim.says, "expected": expected_text(claim, scale), "paper": claim.paper}
    values: dict[str, Any] = {}
    try:
        if claim.kind == "trend":
            ok, measured, values = _trend(claim, members, grid)
        elif claim.kind == "order":
            ok, measured, values = _order(claim, members, grid)
        elif claim.kind == "value":
            m = statistic(claim.statistic, _measures(select(members, claim.members, grid), claim.metric))
            ok, measured, values = compare(m, str(claim.op), float(claim.expected_value(scale))), str(m), {
                "value": m.value, "exact": m.exact}
        else:
            num = median(_measures(select(members, claim.numerator or {}, grid), claim.metric))
            den = median(_measures(select(members, claim.denominator or {}, grid), claim.metric))
            if not den.exact or den.value <= 0:
                raise NotMeasurable(f"the denominator's median {claim.metric} is {den}")
            ratio = Measure(num.value / den.value, exact=num.exact)
            ok = compare(ratio, str(claim.op), float(claim.expected_value(scale)))
            measured = f"{ratio} ({num} / {den})"
            values = {"ratio": ratio.value, "exact": ratio.exact, "numerator": num.value,
                      "numerator_exact": num.exact, "denominator": den.value}
    except NotMeasurable as exc:
        ok, measured = False, f"not measurable: {exc}"
    return {**report, "measured": measured, "verdict": "pass" if ok else "fail", "values": values}


def evaluate(claims: list[Claim], members: list[dict], grid: dict[str, list], scale: str) -> dict:
    """Every claim's report, and the verdict: pass when all pass."""
    results = [evaluate_claim(c, members, grid, scale) for c in claims]
    verdict = "pass" if results and all(r["verdict"] == "pass" for r in results) else "fail"
    return {"verdict": verdict, "claims": results}
