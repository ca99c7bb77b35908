"""Metric ingestion and queries on SQLite and PostgreSQL: idempotent, and downsampled exactly
as the reference method in service.science.downsample."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sqlalchemy import select

from service import store
from service.contract.models import MetricSeries
from service.science.downsample import minmax_downsample
from service.store import metrics_ingest
from service.science.downsample import minmax_downsample
from service.contract.models import MetricSeries
from tests.builders import tiny_spec


@pytest.fixture
def experiment_id(session) -> str:
    return store.create_experiment(session, tiny_spec(), "cpu").id


def rows_of(name: str, steps, values, member: int = 0) -> list[dict]:
    return [
        {"step": int(s), "member": member, "name": name, "value": float(v)}
        for s, v in zip(steps, values)
    ]


def series(result: dict) -> dict[tuple[str, int], dict]:
    return {(s["name"], s["member"]): s for s in result["series"]}


def test_same_rows_twice_store_one_point_each(session, experiment_id):
    rows = rows_of("train_loss", range(0, 500, 5), np.linspace(3, 0.1, 100))
    assert store.ingest_metrics(session, experiment_id, rows) == 100
    assert store.ingest_metrics(session, experiment_id, rows) == 0
    result = store.query_metrics(session, experiment_id, names=None, max_points=None)
    (only,) = result["series"]
    assert only["steps"] == list(range(0, 500, 5))
    assert only["points"] == 100 and not only["downsampled"]
    (info,) = session.scalars(
        select(MetricSeries).where(MetricSeries.experiment_id == experiment_id)
    ).all()
    assert (info.n, info.first_step, info.last_step) == (100, 0, 495)


def test_overlapping_batch_stores_only_the_new_points_and_first_value_wins(
    session, experiment_id
):
    store.ingest_metrics(session, experiment_id, rows_of("acc", range(0, 100), np.zeros(100)))
    # Steps 50..149, with different values: 50..99 exist already and keep their value.
    new = store.ingest_metrics(session, experiment_id, rows_of("acc", range(50, 150), np.ones(100)))
    assert new == 50
    (acc,) = store.query_metrics(session, experiment_id, names=["acc"], max_points=None)["series"]
    assert acc["steps"] == list(range(150))
    assert acc["values"] == [0.0] * 100 + [1.0] * 50
    # The summaries saw only the new points: a downsampled query agrees with the raw data.
    (small,) = store.query_metrics(session, experiment_id, names=["acc"], max_points=10)["series"]
    ref_steps, ref_values = minmax_downsample(np.arange(150), np.array(acc["values"]), 10)
    assert small["steps"] == ref_steps.tolist() and small["values"] == ref_values.tolist()
    assert small["points"] == 150


def test_duplicates_inside_one_batch_keep_the_first(session, experiment_id):
    rows = rows_of("x", [1, 2, 2, 3], [10, 20, 99, 30])
    assert store.ingest_metrics(session, experiment_id, rows) == 3
    (x,) = store.query_metrics(session, experiment_id, names=["x"], max_points=None)["series"]
    assert (x["steps"], x["values"]) == ([1, 2, 3], [10.0, 20.0, 30.0])


def test_nan_is_stored_as_null_and_inf_survives(session, experiment_id):
    values = [1.0, math.nan, math.inf, -math.inf, 2.0]
    store.ingest_metrics(session, experiment_id, rows_of("loss", range(5), values))
    (loss,) = store.query_metrics(session, experiment_id, names=["loss"], max_points=None)["series"]
    assert loss["values"] == [1.0, None, math.inf, -math.inf, 2.0]


def test_members_names_and_windows(session, experiment_id):
    rows = []
    for member in range(3):
        rows += rows_of("train_loss", range(0, 1000, 10), np.full(100, member), member)
        rows += rows_of("val_acc", range(0, 1000, 10), np.full(100, member), member)
    store.ingest_metrics(session, experiment_id, rows)
    everything = store.query_metrics(session, experiment_id, names=None, max_points=None)
    assert [(s["name"], s["member"]) for s in everything["series"]] == [
        ("train_loss", 0), ("train_loss", 1), ("train_loss", 2),
        ("val_acc", 0), ("val_acc", 1), ("val_acc", 2),
    ]
    one = store.query_metrics(
        session, experiment_id, names=["val_acc", "missing"], member=2,
        from_step=95, to_step=130, max_points=None,
    )
    (val,) = one["series"]
    assert (val["name"], val["member"], val["steps"]) == ("val_acc", 2, [100, 110, 120, 130])
    assert val["values"] == [2.0] * 4
    empty = store.query_metrics(
        session, experiment_id, names=None, from_step=2000, max_points=100
    )
    assert empty["series"] == []
    between = store.query_metrics(
        session, experiment_id, names=["val_acc"], from_step=101, to_step=109, max_points=100
    )
    assert between["series"] == []


@pytest.fixture
def random_run(session, experiment_id):
    """Three series with gaps, NaNs and ties, ingested in shuffled, mixed batches of 1000."""
    rng = np.random.default_rng(7)
    raw = {}
    rows = []
    for key, n in ((("loss", 0), 6000), (("loss", 1), 3000), (("acc", 0), 900)):
        steps = np.sort(rng.choice(60_000, size=n, replace=False))
        values = np.round(rng.normal(size=n).cumsum(), 1)  # rounding makes ties
        values[rng.random(n) < 0.01] = np.nan
        raw[key] = (steps, values)
        rows += rows_of(key[0], steps, values, key[1])
    order = rng.permutation(len(rows))
    for start in range(0, len(rows), 1000):
        batch = [rows[i] for i in order[start:start + 1000]]
        store.ingest_metrics(session, experiment_id, batch)
    return experiment_id, raw


WINDOWS = [(None, None), (123, 45_678), (0, 5), (30_000, None), (None, 777), (1000, 1000),
           (59_000, 70_000)]
MAX_POINTS = [2, 3, 4, 10, 100, 1000, 5000]


def test_downsampled_queries_match_the_reference_method(session, random_run):
    experiment_id, raw = random_run
    for max_points, (from_step, to_step) in itertools.product(MAX_POINTS, WINDOWS):
        result = store.query_metrics(
            session, experiment_id, names=None, from_step=from_step, to_step=to_step,
            max_points=max_points,
        )
        got = series(result)
        for key, (steps, values) in raw.items():
            lo = -1 if from_step is None else from_step
            hi = 10**9 if to_step is None else to_step
            inside = (steps >= lo) & (steps <= hi)
            if not inside.any():
                assert key not in got
                continue
            ref_steps, ref_values = minmax_downsample(steps[inside], values[inside], max_points)
            s = got[key]
            where = (key, max_points, from_step, to_step)
            assert s["steps"] == ref_steps.tolist(), where
            expected = [None if math.isnan(v) else v for v in ref_values.tolist()]
            assert s["values"] == expected, where
            assert s["points"] == int(inside.sum())
            assert s["downsampled"] == (len(ref_steps) < inside.sum())
            assert len(s["steps"]) <= max_points


def test_bad_input_is_refused(session, experiment_id):
    with pytest.raises(store.ExperimentNotFound):
        store.ingest_metrics(session, "no-such-id", rows_of("x", [1], [1.0]))
    for bad in (
        [{"step": 1, "member": 0, "name": "x"}],
        [{"step": 1.5, "member": 0, "name": "x", "value": 1.0}],
        [{"step": -1, "member": 0, "name": "x", "value": 1.0}],
        [{"step": 1, "member": 0, "name": "", "value": 1.0}],
        [{"step": 1, "member": 0, "name": "x", "value": "high"}],
        [{"step": 2**40, "member": 0, "name": "x", "value": 1.0}],
    ):
        with pytest.raises(ValueError):
            store.ingest_metrics(session, experiment_id, bad)
    assert store.ingest_metrics(session, experiment_id, []) == 0
    assert store.query_metrics(session, experiment_id, names=None, max_points=None)["series"] == []
    with pytest.raises(ValueError):
        store.query_metrics(session, experiment_id, names=None, max_points=1)
    with pytest.raises(ValueError):
        store.query_metrics(session, experiment_id, names=None, from_step=5, to_step=4,
                            max_points=None)


def test_a_failed_batch_leaves_nothing_behind(session, experiment_id, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("lost the connection")

    monkeypatch.setattr(metrics_ingest, "_write_summaries", boom)
    with pytest.raises(RuntimeError):
        store.ingest_metrics(session, experiment_id, rows_of("x", range(10), range(10)))
    monkeypatch.undo()
    assert store.query_metrics(session, experiment_id, names=None, max_points=None)["series"] == []
    assert store.ingest_metrics(session, experiment_id, rows_of("x", range(10), range(10))) == 10
