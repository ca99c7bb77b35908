"""The per-member fields: what each member of a batched ensemble may have of its own.

One table, read by the spec (EnsembleSpec's lists, their ranges, spec_hash), by the sweeps (what
may differ inside a pack, how a pack's ensemble lists are filled) and by the trainer (each
member's value). A single run sets the value at `path` (`optimizer.lr`); an ensemble sets the
list `ensemble.<name>` with one entry per member, and None there means the single-run value for
every member. Torch-free and pydantic-free: plain data the API server and the engine share.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PerMemberField:
    """One per-member field.

    name: the EnsembleSpec list (`ensemble.lr`); path: the single-run spec field it replaces
    (`optimizer.lr`); kind: the type of an entry; allowed/check: the range each entry must be
    in (as text for the error, and as a test), None where any value of the type goes; optional:
    added after specs were first stored, so spec_hash leaves the list out while it is None and
    old specs keep their hash; counts_up: without the list, member i gets the single-run value
    + i rather than the value itself (seeds: members of one ensemble must differ)."""

    name: str
    path: str
    kind: type
    description: str
    allowed: str | None = None
    check: Callable[[Any], bool] | None = None
    optional: bool = False
    counts_up: bool = False


PER_MEMBER_FIELDS: tuple[PerMemberField, ...] = (
    PerMemberField("seeds", "training.seed", int, "Per-member seeds; default training.seed + i.",
                   counts_up=True),
    PerMemberField("lr", "optimizer.lr", float, "Per-member learning rates.",
                   "(0, 10]", lambda x: 0 < x <= 10),
    PerMemberField("weight_decay", "optimizer.weight_decay", float, "Per-member weight decays.",
                   "[0, 100]", lambda x: 0 <= x <= 100),
    PerMemberField("init_scale", "model.init_scale", float, "Per-member model.init_scale.",
                   "(0, 1000]", lambda x: 0 < x <= 1000, optional=True),
    PerMemberField("train_fraction", "task.train_fraction", float,
                   "Per-member task.train_fraction.", "(0, 1)", lambda x: 0 < x < 1, optional=True),
    PerMemberField("split_seed", "task.split_seed", int, "Per-member task.split_seed.",
                   optional=True),
    PerMemberField("grad_filter_lamb", "optimizer.grad_filter.lamb", float,
                   "Per-member optimizer.grad_filter.lamb (needs a grad_filter).",
                   "[0, 1000]", lambda x: 0 <= x <= 1000, optional=True),
)
BY_NAME: dict[str, PerMemberField] = {f.name: f for f in PER_MEMBER_FIELDS}
# Per-member lists added after specs were first stored: left out of spec_hash while None.
OPTIONAL_PER_MEMBER: tuple[str, ...] = tuple(f.name for f in PER_MEMBER_FIELDS if f.optional)
# The spec paths that may differ between the members of one pack (the name too: each member
# is its own experiment). Everything else fixes the shapes and the schedule, so it must agree.
PER_MEMBER_PATHS: tuple[str, ...] = ("name", *(f.path for f in PER_MEMBER_FIELDS))


def value_at(spec: Any, path: str) -> Any:
    """The value at path 'a.b.c' of a spec, dumped as JSON (spec[a][b][c]) or not
    (spec.a.b.c); None where a section on the way is None (a spec without grad_filter has no
    optimizer.grad_filter.lamb)."""
    node: Any = spec
    for part in path.split("."):
        if node is None:
            return None
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return node


def without_per_member(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a spec dumped as JSON less every PER_MEMBER_PATHS value: what the members of
    one pack must share."""
    shape = copy.deepcopy(data)
    for path in PER_MEMBER_PATHS:
        *sections, leaf = path.split(".")
        node = value_at(shape, ".".join(sections)) if sections else shape
        if isinstance(node, dict):
            node.pop(leaf, None)
    return shape


def ensemble_lists(members: list[dict[str, Any]]) -> dict[str, list[Any] | None]:
    """Every per-member list of the ensemble that trains these single-run specs (dumped as
    JSON) together: member e's value at each field's path. A field whose path is absent from
    the first member (a section that is None, e.g. no grad_filter) stays None."""
    lists: dict[str, list[Any] | None] = {}
    for field in PER_MEMBER_FIELDS:
        values = [value_at(member, field.path) for member in members]
        lists[field.name] = None if values[0] is None else values
    return lists


def member_values(spec: Any, name: str) -> list[Any]:
    """Each member's value of the per-member field `name` in an ExperimentSpec: the list
    ensemble.<name>, or else the single-run value at the field's path for every member (+ i
    for member i where the field counts_up)."""
    field = BY_NAME[name]
    values = getattr(spec.ensemble, name)
    if values is not None:
        return list(values)
    single = value_at(spec, field.path)
    size = spec.ensemble.size
    return [single + i for i in range(size)] if field.counts_up else [single] * size
