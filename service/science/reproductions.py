"""Reproductions: a paper's experiment as a named, versioned sweep with its claims written as data
(reproductions/NAME.yaml), at two scales: `ci` (a few minutes on 2 CPU cores) and `paper`.

Pure Python, no database. A reproduction's run is an ordinary sweep whose body is
sweep_body(scale): the API submits it, and a sweep is a run of the reproduction when its stored
body is that body at some scale (scale_of), so nothing but the sweep is stored. Once every member
has finished, report() evaluates the claims (service/science/claims.py) on the member summaries.
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.contract.spec import deep_merge
from service.science.claims import EXTREMES, Claim, evaluate, resolve
from service.science.sweeps import SweepSpec

SCALES = ("ci", "paper")
Scale = Literal["ci", "paper"]
# The folder beside service/ in a source checkout (GROKLAB_REPRODUCTIONS_DIR overrides it).
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "reproductions"


class ScaleSpec(BaseModel):
    """What a scale changes in the sweep: base fields (deep-merged) and whole grid axes."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    pack_size: int | None = Field(None, ge=1)


class SweepPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]]


class PlotSpec(BaseModel):
    """The report's plot: steps to memorise and to generalise against a grid axis, over the
    members that members selects (by grid point, as a claim does; all of them when empty)."""

    model_config = ConfigDict(extra="forbid")

    axis: str
    members: dict[str, Any] = Field(default_factory=dict)


class Reproduction(BaseModel):
    """One reproductions/NAME.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    version: int = Field(ge=1)
    paper: str = Field(description="The paper: authors, year, title.")
    summary: str = Field(description="What is reproduced, in a sentence.")
    sweep: SweepPart
    scales: dict[Scale, ScaleSpec]
    claims: list[Claim] = Field(min_length=1)
    plot: PlotSpec | None = Field(
        None, description="The report's plot; default: against the first trend claim's axis, "
        "else the first axis that is not the seed, over every member.")

    @model_validator(mode="after")
    def _check(self) -> "Reproduction":
        missing = [s for s in SCALES if s not in self.scales]
        if missing:
            raise ValueError(f"scales must give {', '.join(SCALES)} (missing {', '.join(missing)})")
        for scale in SCALES:
            body = self.sweep_body(scale)
            SweepSpec.model_validate(body)
            grid = body["grid"]
            if self.plot is not None:
                if self.plot.axis not in grid:
                    raise ValueError(f"plot.axis {self.plot.axis!r} is not a grid axis at scale "
                                     f"{scale}: {', '.join(grid)}")
                _check_selector("plot", self.plot.members, grid, scale)
            for i, claim in enumerate(self.claims):
                for where in claim.selectors():
                    _check_selector(f"claims[{i}]", where, grid, scale)
                if claim.axis is not None and claim.axis not in grid:
                    raise ValueError(f"claims[{i}].axis {claim.axis!r} is not a grid axis")
                if claim.kind not in ("trend", "order") and claim.expected_value(scale) is None:
                    raise ValueError(f"claims[{i}].value gives nothing for scale {scale}")
        return self

    def sweep_body(self, scale: str) -> dict[str, Any]:
        """The POST /api/v1/sweeps body of this reproduction at this scale."""
        spec = self.scales[scale]  # type: ignore[index]
        body: dict[str, Any] = {
            "name": f"{self.name} v{self.version} {scale}",
            "base": deep_merge(self.sweep.base, spec.base),
            "grid": {**self.sweep.grid, **spec.grid},
        }
        if spec.pack_size is not None:
            body["pack_size"] = spec.pack_size
        return body

    @cached_property
    def stored_bodies(self) -> dict[str, dict[str, Any]]:
        """Each scale's sweep body as a sweep stores it (validated and dumped), made once: every
        report request compares a sweep with them (scale_of)."""
        return {scale: SweepSpec.model_validate(self.sweep_body(scale)).model_dump(mode="json")
                for scale in SCALES}

    def scale_of(self, stored: dict[str, Any]) -> str | None:
        """The scale whose sweep body this stored sweep spec is, or None: not a run of it."""
        return next((scale for scale, body in self.stored_bodies.items() if body == stored), None)

    def n_members(self, scale: str) -> int:
        n = 1
        for values in self.sweep_body(scale)["grid"].values():
            n *= len(values)
        return n

    def plot_axis(self, scale: str) -> str:
        """The grid axis the report's plot (steps to memorise and to generalise) is drawn against:
        plot.axis, else the first trend claim's axis, else the first axis that is not the seed."""
        if self.plot is not None:
            return self.plot.axis
        trend = next((c.axis for c in self.claims if c.kind == "trend" and c.axis), None)
        axes = list(self.sweep_body(scale)["grid"])
        return trend or next((a for a in axes if a != "training.seed"), axes[0])

    def plot_members(self, scale: str) -> dict[str, Any]:
        """The grid point the plot's members match ($first/$last resolved at this scale)."""
        where = self.plot.members if self.plot is not None else {}
        return resolve(where, self.stored_bodies[scale]["grid"])

    def report(self, scale: str, members: list[dict]) -> dict[str, Any]:
        """{verdict, claims: [{says, expected, measured, verdict, paper, values}]} on finished
        members ({index, status, point, summary} each)."""
        return evaluate(self.claims, members, self.sweep_body(scale)["grid"], scale)


def _check_selector(where: str, selector: dict[str, Any], grid: dict[str, list], scale: str) -> None:
    """Each axis of the selector is a grid axis and each value one of its values (or an extreme)."""
    for axis, value in selector.items():
        if axis not in grid:
            raise ValueError(f"{where} selects on {axis!r}, not a grid axis at scale {scale}: "
                             f"{', '.join(grid)}")
        if value not in EXTREMES and value not in grid[axis]:
            raise ValueError(f"{where}: {axis}={value!r} is not in the {scale} grid {grid[axis]}")


class ReproductionInvalid(ValueError):
    """A reproductions/*.yaml file that is not a valid reproduction (says which and why)."""


def load_reproduction(path: Path) -> Reproduction:
    try:
        data = yaml.safe_load(path.read_text())
        reproduction = Reproduction.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ReproductionInvalid(f"{path}: {exc}") from None
    if reproduction.name != path.stem:
        raise ReproductionInvalid(f"{path}: name {reproduction.name!r} must be the file's name")
    return reproduction


@lru_cache(maxsize=8)
def reproductions(folder: Path = DEFAULT_DIR) -> dict[str, Reproduction]:
    """Every reproduction in folder by name (read once per folder); {} without the folder."""
    if not folder.is_dir():
        return {}
    return {r.name: r for r in map(load_reproduction, sorted(folder.glob("*.yaml")))}
