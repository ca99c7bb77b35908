"""service/contract/budgets.py: the products a spec asks for, and the limits they are checked
against."""
from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.access import auth
from service.contract import budgets
from service.contract.limits import Limits
from service.contract.settings import Settings, get_settings
from service.contract.spec import ExperimentSpec, spec_from_preset
from service.infra.db import make_engine, make_sessionmaker, migrate

LIMITS = Limits.from_settings(Settings())


def test_products_of_ci_small_at_the_largest_ensemble():
    spec = spec_from_preset("ci-small", ensemble={"size": 256})
    n = spec.param_count()
    assert budgets.compute(spec) == 256 * n * spec.n_train * 1200
    assert budgets.checkpoints(spec) == 1200 // 400
    assert budgets.evaluations(spec) == 1200 // 50
    assert budgets.analyses(spec) == 1200 // 200
    # weights + Adam's two moments, float32: the ~645 MB of the issue
    assert budgets.checkpoint_bytes(spec) == 256 * n * 4 * 3
    assert 640e6 < budgets.checkpoint_bytes(spec) < 650e6
    assert budgets.grad_filter_bytes(spec) == 0
    # the analysis holds the grid's MLP activations and [p, p] tables, never the p^3 logits
    p, chunk = 47, 65536 // 256
    per_pair = 4 * p * 8 + 3 * (512 + 4 * 128) * 4
    assert budgets.analysis_bytes(spec) == 256 * p * p * (512 * 4 + 24) + 256 * chunk * per_pair


def test_analysis_memory_grows_with_p_squared_not_cubed():
    def analysis(p: int) -> int:
        return budgets.analysis_bytes(spec_from_preset("nanda2023", task={"p": p}))

    assert analysis(509) / analysis(113) < 1.5 * (509 / 113) ** 2


def test_grad_filter_memory_is_window_members_params():
    ma = spec_from_preset("ci-small", optimizer={"grad_filter": {"kind": "ma", "window": 50}},
                          ensemble={"size": 3})
    assert budgets.grad_filter_bytes(ma) == 50 * 3 * ma.param_count() * 4
    # its checkpoint holds the window too
    assert budgets.checkpoint_bytes(ma) == 3 * ma.param_count() * 4 * (1 + 2 + 50)
    ema = spec_from_preset("grokfast2024")
    assert budgets.grad_filter_bytes(ema) == 0
    assert budgets.checkpoint_bytes(ema) == ema.param_count() * 4 * 4


def test_minibatch_and_member_training_sets_set_the_examples_per_step():
    assert budgets.examples_per_step(spec_from_preset("power2022")) == 512
    spec = spec_from_preset("ci-small", ensemble={"size": 2, "train_fraction": [0.3, 0.5]})
    assert budgets.examples_per_step(spec) == spec.n_examples(0.5)


def test_no_analysis_no_analysis_budget():
    spec = spec_from_preset("ci-small", analysis={"every": None}, task={"p": 509})
    assert budgets.analyses(spec) == 0 and budgets.analysis_bytes(spec) == 0
    mlp = spec_from_preset("prieto2025")  # no Fourier measures for the MLP
    assert budgets.analyses(mlp) == 0


def test_time_limit_is_the_floor_plus_compute():
    spec = spec_from_preset("ci-small")
    settings = Settings(time_limit_floor_s=100, time_limit_s_per_compute=1e-9)
    assert budgets.time_limit_s(spec, settings) == pytest.approx(100 + 1e-9 * budgets.compute(spec))
    assert budgets.time_limit_s(spec, Settings(time_limit_floor_s=0,
                                               time_limit_s_per_compute=0)) is None


def test_the_worker_validates_without_limits():
    """A stored spec was capped at submission; without a context no budget applies."""
    data = {"preset": "ci-small", "training": {"steps": 100_000, "checkpoint_every": 1}}
    ExperimentSpec.model_validate(data)
    with pytest.raises(ValidationError) as exc:
        ExperimentSpec.model_validate(data, context=LIMITS)
    (error,) = exc.value.errors()
    assert error["loc"] == ("training", "checkpoint_every")
    assert "100000 checkpoints" in error["msg"] and "at least 50" in error["msg"]


def test_several_budgets_are_reported_together():
    data = {"preset": "ci-small", "training": {"steps": 1_000_000, "checkpoint_every": 1,
                                               "eval_every": 1}, "ensemble": {"size": 256}}
    with pytest.raises(ValidationError) as exc:
        ExperimentSpec.model_validate(data, context=LIMITS)
    locs = {e["loc"] for e in exc.value.errors()}
    assert {("training", "steps"), ("training", "checkpoint_every"),
            ("training", "eval_every"), ("analysis", "every")} <= locs


def test_limits_take_the_tokens_compute_override():
    principal = auth.Principal("t", "o", "write", max_compute=5.0)
    assert Limits.from_settings(Settings(), principal).max_compute == 5.0
    assert Limits.from_settings(Settings()).max_compute == Settings().max_compute_per_job


def test_cli_token_create_stores_the_overrides(tmp_path, monkeypatch):
    from service.cli import app

    monkeypatch.setenv("GROKLAB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GROKLAB_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        url = Settings().resolved_database_url
        migrate(url)
        r = CliRunner().invoke(app, ["token", "create", "--owner", "erin", "--scope", "write",
                                     "--max-active-jobs", "7", "--submissions-per-minute", "2",
                                     "--max-compute", "1e12"])
        assert r.exit_code == 0, r.output
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            principal = auth.authenticate(session, r.stdout.strip())
        engine.dispose()
        assert (principal.max_active_jobs, principal.submissions_per_minute,
                principal.max_compute) == (7, 2, 1e12)
        r = CliRunner().invoke(app, ["token", "create", "--owner", "erin",
                                     "--max-active-jobs", "-1"])
        assert r.exit_code == 2
    finally:
        get_settings.cache_clear()
