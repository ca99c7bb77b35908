"""Sweeps: a grid over spec paths, expanded into member specs and planned into packs.

Pure Python, no database: the API validates a sweep with this, the store saves what it returns.

A sweep is `{"name", "base": <spec>, "grid": {"optimizer.weight_decay": [0, 1], ...}}`. Every
point of the Cartesian product of the grid (axes in the order given, the last one varying
fastest) is one member: the base spec with each axis path set to the point's value, validated as
an ordinary spec. Members whose shapes agree are trained together as one batched ensemble, a
**pack** (see plan_packs); the values that may differ inside a pack are the per-member fields
(service/contract/members.py: PER_MEMBER_PATHS), everything else fixes the shapes and the schedule.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.contract.budgets import compute, member_memory, most_members
from service.contract.limits import Limits
from service.contract.members import PER_MEMBER_PATHS, ensemble_lists, without_per_member
from service.contract.spec import ExperimentSpec
from service.science.pruning import EarlyStoppingSpec, early_stopping_problem

# The most members of a CPU pack: on one thread, ci-small packs of 1, 2 and 4 members cost the
# same per member-step, 8 cost 4% more and 12 11% more (their activations fall out of cache),
# and a pack whose members' training sets differ pays for its largest one (bench/README.md,
# "Cores"). So on the CPU a pack holds at most 4 members that share a training set, and the
# sweep is spread over the worker's processes instead.
CPU_PACK_SIZE = 4


class SweepSpec(BaseModel):
    """A POST /api/v1/sweeps body."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    base: dict[str, Any] = Field(
        default_factory=dict, description="The spec every member starts from (presets apply)."
    )
    grid: dict[str, list[Any]] = Field(
        description="Dotted spec paths and the values each takes; one member per point of the "
        "Cartesian product.",
        examples=[{"optimizer.weight_decay": [0, 1], "training.seed": [0, 1]}],
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None,
        description="Stop members early: grokking_aware prunes those whose forecast says they "
        "will not generalise (service/science/pruning.py); asha prunes on a validation metric.",
        examples=[{"policy": "grokking_aware", "after": "memorization", "check_every": 100}],
    )
    pack_size: int | None = Field(
        None, ge=1,
        description="Most members trained together in one pack (at most GROKLAB_MAX_ENSEMBLE; "
        "a pack is one job, so no pack is larger than the per-job budgets allow for its members "
        "together). Default: on the CPU, one pack "
        "per training process of the workers (GROKLAB_WORKER_PROCESSES), of at most "
        f"{CPU_PACK_SIZE} members; on a GPU (training.device cuda, or auto on workers with GPUs) "
        "as many as fit in GROKLAB_PACK_MEMORY_BYTES.",
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("grid must name at least one axis")
        for path, values in grid.items():
            if not values:
                raise ValueError(f"grid.{path} must list at least one value")
            if unknown := unknown_path(path):
                raise ValueError(f"grid axis {path!r}: {unknown}")
            seen = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"grid.{path} lists a value twice")
        return grid

    @property
    def n_members(self) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n


@dataclass
class Member:
    """One point of the grid: its axis values and its validated spec."""

    index: int
    point: dict[str, Any]
    spec: ExperimentSpec


class SweepInvalid(ValueError):
    """Member specs that are not valid: errors shaped like FastAPI's (loc, msg, input)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `GradFilterSpec | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (model := _model_of(arg)) is not None:
                return model
    return None


def unknown_path(path: str) -> str | None:
    """Why `path` names no field of the spec (with the fields allowed there), or None."""
    model: type[BaseModel] | None = ExperimentSpec
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if model is None:
            return f"{'.'.join(parts[:depth])} has no fields below it"
        if part not in model.model_fields:
            where = ".".join(parts[:depth]) or "the spec"
            return f"unknown field {part!r} in {where}; valid: {', '.join(model.model_fields)}"
        model = _model_of(model.model_fields[part].annotation)
    if model is not None:
        return f"{path} is a section; vary one of its fields: {', '.join(model.model_fields)}"
    return None


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """data[a][b][c] = value for path 'a.b.c', creating the sections on the way."""
    *sections, leaf = path.split(".")
    for section in sections:
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data = data[section]
    data[leaf] = copy.deepcopy(value)


def member_name(sweep_name: str, point: dict[str, Any]) -> str:
    label = ",".join(f"{path.rsplit('.', 1)[-1]}={json.dumps(v)}" for path, v in point.items())
    return f"{sweep_name}[{label}]"[:200]


def _blame(loc: tuple, grid: dict[str, list[Any]], point_index: dict[str, int]) -> str | None:
    """The grid axis an error at `loc` comes from: the axis whose path is the error's field or a
    section around it, or whose field the error's field sits in."""
    field = ".".join(str(part) for part in loc)
    for path in grid:
        if field and (field == path or field.startswith(path + ".") or path.startswith(field + ".")):
            return path
    return None


def check_size(sweep: SweepSpec, limits: Limits | None, max_members: int) -> None:
    """What is refused before any member is built, from the request alone: a member count
    over max_members (GROKLAB_MAX_SWEEP_MEMBERS), a pack_size over the largest ensemble, a
    data_schedule longer than the limits allow (in the base or as an axis value), a base larger
    than a stored spec may be. Raises SweepInvalid."""
    if sweep.n_members > max_members:
        raise SweepInvalid([{
            "type": "value_error",
            "loc": ["body", "grid"],
            "msg": f"the grid has {sweep.n_members} points; a sweep may have at most "
            f"{max_members} members (GROKLAB_MAX_SWEEP_MEMBERS)",
            "input": {path: len(values) for path, values in sweep.grid.items()},
        }])
    if limits is None:
        return
    errors: list[dict[str, Any]] = []
    most = limits.max_ensemble
    if sweep.pack_size is not None and most is not None and sweep.pack_size > most:
        errors.append({"type": "value_error", "loc": ["body", "pack_size"],
                       "input": sweep.pack_size, "msg": f"pack_size must be at most {most} "
                       f"(GROKLAB_MAX_ENSEMBLE) (got {sweep.pack_size})"})
    stages = limits.max_data_schedule_stages
    schedules = [(["body", "base", "data_schedule"], "base.data_schedule",
                  sweep.base.get("data_schedule"))]
    schedules += [(["body", "grid", "data_schedule", i], f"grid.data_schedule[{i}]", value)
                  for i, value in enumerate(sweep.grid.get("data_schedule", []))]
    for loc, where, value in schedules:
        if stages is not None and isinstance(value, list) and len(value) > stages:
            errors.append({"type": "value_error", "loc": loc, "input": len(value),
                           "msg": f"{where}: data_schedule has {len(value)} stages; at most "
                           f"{stages} allowed (GROKLAB_MAX_DATA_SCHEDULE_STAGES)"})
    size = len(json.dumps(sweep.base, separators=(",", ":")))
    if limits.max_spec_bytes is not None and size > limits.max_spec_bytes:
        errors.append({"type": "value_error", "loc": ["body", "base"], "input": size,
                       "msg": f"base: {size} bytes of JSON; a stored spec may be at most "
                       f"{limits.max_spec_bytes} (GROKLAB_MAX_SPEC_BYTES)"})
    if errors:
        raise SweepInvalid(errors)


def expand(sweep: SweepSpec, limits: Limits | None, max_members: int) -> list[Member]:
    """The members of a sweep, validated. Raises SweepInvalid naming each bad axis value
    (`grid.task.p[2]: p must be prime for op 'x/y' (got 100)`), or what check_size refuses."""
    check_size(sweep, limits, max_members)
    in_grid = [path for path in sweep.grid if path.split(".")[0] == "ensemble"]
    if "ensemble" in sweep.base or in_grid:
        raise SweepInvalid([{
            "type": "value_error",
            "loc": ["body", "grid", in_grid[0]] if in_grid else ["body", "base", "ensemble"],
            "msg": "sweep members are single runs (packing batches them on the worker); leave "
            "out the ensemble section",
            "input": sweep.grid[in_grid[0]] if in_grid else sweep.base.get("ensemble"),
        }])
    axes = list(sweep.grid)
    members: list[Member] = []
    errors: dict[tuple, dict[str, Any]] = {}
    grid_indices = itertools.product(*(range(len(values)) for values in sweep.grid.values()))
    for index, indices in enumerate(grid_indices):
        positions = dict(zip(axes, indices))
        point = {path: sweep.grid[path][i] for path, i in positions.items()}
        data = copy.deepcopy(sweep.base)
        for path, value in point.items():
            set_path(data, path, value)
        data["name"] = member_name(sweep.name, point)
        try:
            spec = ExperimentSpec.model_validate(data, context=limits)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                axis = _blame(error["loc"], sweep.grid, positions)
                # pydantic prefixes a validator's ValueError with "Value error, ": the message
                # already says what is wrong
                problem = error["msg"].removeprefix("Value error, ")
                if axis is None:
                    loc = ["body", "base", *error["loc"]]
                    msg = f"base.{'.'.join(map(str, error['loc']))}: {problem}" if error[
                        "loc"] else f"member {json.dumps(point)}: {problem}"
                    key = (tuple(loc), problem)
                    value = error.get("input")
                else:
                    at = positions[axis]
                    loc = ["body", "grid", axis, at]
                    msg = f"grid.{axis}[{at}]: {problem}"
                    key = (tuple(loc), problem)
                    value = sweep.grid[axis][at]
                errors.setdefault(key, {"type": "value_error", "loc": loc, "msg": msg,
                                        "input": _jsonable(value)})
            continue
        if sweep.early_stopping is not None and (problem := early_stopping_problem(
                sweep.early_stopping, spec.training.eval_every, spec.training.steps, spec.task.kind)):
            loc = ["body", "early_stopping"]
            errors.setdefault((tuple(loc), problem), {"type": "value_error", "loc": loc, "msg": problem,
                                                      "input": sweep.early_stopping.model_dump(mode="json")})
            continue
        members.append(Member(index, point, spec))
    if errors:
        raise SweepInvalid(list(errors.values()))
    return members


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def pack_key(spec: ExperimentSpec) -> str:
    """What members of one pack must share: the spec less its per-member values."""
    return json.dumps(without_per_member(spec.model_dump(mode="json")), sort_keys=True)


def cpu_pack_key(spec: ExperimentSpec) -> str:
    """What members of one default CPU pack share: pack_key and the training set. A pack whose
    members' training sets differ trains each member on as many rows as the largest one (padded,
    weighted), which a GPU absorbs but a CPU pays for."""
    split = (spec.task.train_fraction, spec.task.split_seed)
    return json.dumps([pack_key(spec), split])



def trains_on_gpu(spec: ExperimentSpec, worker_gpus: int) -> bool:
    """Whether a member will train on a GPU: it asks for cuda, or for auto on workers that have
    GPUs (GROKLAB_WORKER_GPUS, else the API host's own)."""
    return spec.training.device == "cuda" or (spec.training.device == "auto" and worker_gpus > 0)


def default_pack_size(spec: ExperimentSpec, memory_bytes: int, max_ensemble: int) -> int:
    """On a GPU, as many members as fit in memory_bytes (at most max_ensemble),
    each holding budgets.member_memory(spec).training."""
    return max(1, min(max_ensemble, memory_bytes // max(1, member_memory(spec).training)))


def cpu_pack_sizes(n_members: int, processes: int, best: int = CPU_PACK_SIZE) -> list[int]:
    """The sizes of the CPU packs of n_members like-shaped members for `processes` training
    processes: as many packs as processes (a multiple of them when every process would get more
    than `best` members, so that each round of packs keeps every process busy), as equal in
    size as can be, never more packs than members. 12 members on 2 processes with best 4: two
    rounds of two packs, [3, 3, 3, 3]."""
    if n_members < 1:
        return []
    rounds = math.ceil(n_members / (max(1, processes) * best))
    n_packs = min(n_members, max(1, processes) * rounds)
    small, extra = divmod(n_members, n_packs)
    return [small + 1] * extra + [small] * (n_packs - extra)


def plan_packs(
    members: list[Member], pack_size: int | None, memory_bytes: int, max_ensemble: int,
    processes: int = 1, worker_gpus: int = 0, limits: Limits | None = None,
) -> list[list[Member]]:
    """Members grouped by pack_key (in grid order), each group cut into packs: of pack_size
    when asked for; else on a GPU as many as fit in memory_bytes (spread over the processes, one
    per GPU, when they all fit), and on the CPU one pack per training process of at most
    CPU_PACK_SIZE members that also share their training set (cpu_pack_key, cpu_pack_sizes).
    `processes` and
    `worker_gpus` describe a worker host (service.science.worker_plan): the API sizes packs when the
    sweep is submitted, for workers like its own plan says (GROKLAB_WORKER_PROCESSES and
    GROKLAB_WORKER_GPUS, else the API host's cores and GPUs). The packs come largest first (by
    budgets.compute), in grid order among equals. With `limits`, no pack is larger than the
    per-job budgets allow (budgets.most_members): a pack is one job."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        on_cpu = pack_size is None and not trains_on_gpu(member.spec, worker_gpus)
        key = cpu_pack_key(member.spec) if on_cpu else pack_key(member.spec)
        groups.setdefault(key, []).append(member)
    packs = []
    for group in groups.values():
        cap = max_ensemble
        if limits is not None:  # the member that costs most (the largest training set)
            costliest = max(group, key=lambda member: compute(member.spec)).spec
            cap = most_members(costliest, limits, min(max_ensemble, pack_size or max_ensemble))
        if pack_size is None and not trains_on_gpu(group[0].spec, worker_gpus):
            sizes = cpu_pack_sizes(len(group), processes, min(CPU_PACK_SIZE, cap))
        else:
            size = pack_size or min(default_pack_size(group[0].spec, memory_bytes, max_ensemble),
                                    math.ceil(len(group) / max(1, processes)))
            size = min(size, cap)
            sizes = [size] * math.ceil(len(group) / size)
        start = 0
        for size in sizes:
            packs.append(group[start : start + size])
            start += size
    # Longest first: workers claim a sweep's packs in this order (store.create_sweep), so the
    # big packs start at once and the small ones fill in behind them, and no process is left
    # with a big pack to train alone at the end (bench/README.md, "where the time goes").
    packs.sort(key=lambda pack: -sum(compute(member.spec) for member in pack))
    return [pack for pack in packs if pack]


def pack_spec(member_specs: list[ExperimentSpec]) -> ExperimentSpec:
    """The one ensemble spec that trains these members together: the first member's spec with
    ensemble.size = len(member_specs) and every per-member value as an ensemble list. Member e
    of it trains exactly as member_specs[e] would alone. Raises ValueError when the members'
    shapes disagree (their pack_key differs)."""
    if not member_specs:
        raise ValueError("a pack needs at least one member")
    key = pack_key(member_specs[0])
    for spec in member_specs[1:]:
        if pack_key(spec) != key:
            raise ValueError(
                f"members {member_specs[0].name!r} and {spec.name!r} differ in more than "
                f"{', '.join(PER_MEMBER_PATHS[1:])}: they cannot share a pack"
            )
    data = member_specs[0].model_dump(mode="json")
    data["name"] = "pack"
    data["ensemble"] = {
        "size": len(member_specs),
        **ensemble_lists([spec.model_dump(mode="json") for spec in member_specs]),
    }
    return ExperimentSpec.model_validate(data)
