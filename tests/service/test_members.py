"""service/contract/members.py: the one table of per-member fields, checked against the spec it describes."""
from __future__ import annotations

from service.contract.members import PER_MEMBER_FIELDS, PER_MEMBER_PATHS
from service.contract.spec import EnsembleSpec, spec_from_preset
from service.science.sweeps import pack_spec, unknown_path


def test_every_per_member_field_is_an_ensemble_list_and_a_single_run_field():
    assert list(EnsembleSpec.model_fields) == ["size", *(f.name for f in PER_MEMBER_FIELDS)]
    assert [path for path in PER_MEMBER_PATHS if unknown_path(path)] == []


def test_each_member_of_a_pack_gets_its_single_run_value_of_every_field():
    singles = [
        spec_from_preset("ci-small", training={"seed": 3 + i},
                         optimizer={"lr": 1e-3 * (i + 1), "weight_decay": 0.5 * i,
                                    "grad_filter": {"kind": "ema", "lamb": 1.0 + i}},
                         model={"init_scale": 1.0 + i},
                         task={"train_fraction": 0.3 + 0.1 * i, "split_seed": 7 * i})
        for i in range(3)
    ]
    pack = pack_spec(singles)
    for field in PER_MEMBER_FIELDS:
        alone = [single.member_values(field.name)[0] for single in singles]
        assert pack.member_values(field.name) == alone, field.name


def test_without_the_lists_every_member_has_the_single_run_value_and_seeds_count_up():
    spec = spec_from_preset("ci-small", training={"seed": 5}, ensemble={"size": 3})
    assert spec.member_values("seeds") == [5, 6, 7]
    assert spec.member_values("lr") == [spec.optimizer.lr] * 3
    assert spec.member_values("train_fraction") == [spec.task.train_fraction] * 3
