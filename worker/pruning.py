"""The live side of early stopping: each job member's forecast after every evaluation, and, for
the members of a sweep with `early_stopping`, the check at every check step that may prune them.

The decisions are service.science.pruning's, on the member's own series as recorded (the same
functions the benchmark replays); this module only keeps the series, asks the database for the
other members' scores when a policy ranks, and stores the forecasts. A pruned member leaves its
pack through Trainer.run's members_to_stop, with the reason "pruned", like a cancel.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.contract.spec import ExperimentSpec
from service.science.pruning import (
    ASHA,
    FORECAST_SERIES,
    GROKKING_AWARE,
    EarlyStoppingSpec,
    decide,
    forecast,
    is_check_step,
    memorized_by,
)
from worker.outage import DATABASE_DOWN

log = logging.getLogger(__name__)

PRUNED = "pruned"  # the reason a pruned member leaves its batch with
# The forecasts are stored at most this often (one transaction for the job's members): the
# status shows one at most this old; the summary has the last.
FORECAST_EVERY_S = 2.0


class MemberForecasts:
    """Forecasts (every member of a modular task) and pruning (sweep members under an
    early_stopping) of one job. observe() takes each on_metrics call's rows, routed to members
    (member -> rows of its row 0 and others) and returns the score rows to record beside them."""

    def __init__(
        self, sessions: sessionmaker[Session], claims: list[tuple[str, int]], specs: list[ExperimentSpec],
        sweep_ids: list[str | None], early_stopping: EarlyStoppingSpec | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self._unstored: dict[int, dict[str, Any]] = {}
        self._memorization: dict[int, int | None] = {}
        self._stored_at = -1e18
        self.claims = list(claims)
        self.es = early_stopping
        self.sweep_ids = sweep_ids
        self.forecasting = [spec.task.kind == "modular" for spec in specs]
        names = set(FORECAST_SERIES) | ({early_stopping.metric} if early_stopping else set())
        self.names = names
        self.series: list[dict[str, list[tuple[int, float]]]] = [{} for _ in claims]
        self.latest: dict[int, dict[str, Any]] = {}  # member -> its last forecast
        self.pruned: dict[int, dict[str, Any]] = {}  # member -> {"policy", "step", "score", "reason"}

    @classmethod
    def for_job(
        cls, sessions: sessionmaker[Session], claims: list[tuple[str, int]], specs: list[ExperimentSpec],
        sweep_ids: list[str | None],
    ) -> "MemberForecasts":
        """The job's, with its sweep's early_stopping (the members of a pack share one sweep)."""
        es = None
        with sessions() as s:
            found = store.sweep_early_stopping(s, sweep_ids[0])
        if found is not None:
            es = EarlyStoppingSpec.model_validate(found)
        return cls(sessions, claims, specs, sweep_ids, es)

    def load_history(self, series: dict[int, dict[str, list[tuple[int, float]]]]) -> None:
        """The series recorded before a resume ({member: {name: points}})."""
        for member, named in series.items():
            for name, points in named.items():
                if name in self.names:
                    self.series[member][name] = sorted(points)

    # ---- the engine's rows ---------------------------------------------------------------------
    def observe(self, routed: dict[int, list[dict]]) -> dict[int, list[dict]]:
        """Record each member's row-0 points; after an evaluation, its forecast and, at a check
        step, the check. Returns {member: score rows to record} (grokking_aware's forecast)."""
        evaluated: dict[int, int] = {}
        for member, rows in routed.items():
            for row in rows:
                if row["member"] == 0 and row["name"] in self.names:
                    self.series[member].setdefault(row["name"], []).append((row["step"], row["value"]))
                    if row["name"] == "val_acc":
                        evaluated[member] = row["step"]
        extra: dict[int, list[dict]] = {}
        due = []
        if self.es is not None:
            due = [m for m, step in evaluated.items() if m not in self.pruned and self.sweep_ids[m] is not None
                   and is_check_step(self.es, step, self._memorized(m, step))]
        # A forecast costs about a millisecond per 400 evaluations of a member: at every check
        # step, and otherwise (for the status) at most every FORECAST_EVERY_S.
        shown = self.clock() - self._stored_at >= FORECAST_EVERY_S
        forecasts = {}
        for member, step in evaluated.items():
            if not self.forecasting[member] or member in self.pruned or not (shown or member in due):
                continue
            found = forecast(self.series[member], step)
            if found is not None:
                forecasts[member] = found
                self.latest[member] = found
                self._unstored[member] = found
        if self._unstored and shown:
            self._store_forecasts()
        for member in due:
            extra.setdefault(member, []).extend(self._check(member, evaluated[member], forecasts, due))
        return extra

    def _memorized(self, member: int, step: int) -> int | None:
        """memorized_by, found once (it never changes once reached)."""
        if self._memorization.get(member) is None:
            self._memorization[member] = memorized_by(self.series[member], step)
        return self._memorization[member]

    def _check(self, member: int, step: int, forecasts: dict[int, dict], due: list[int]) -> list[dict]:
        es = self.es
        assert es is not None
        own = forecasts.get(member)
        value = _at(self.series[member].get(es.metric, []), step)
        scores = {m: (forecasts[m]["will_generalize"] if m in forecasts else None) if es.policy == GROKKING_AWARE
                  else _at(self.series[m].get(es.metric, []), step) for m in due}
        peers = [v for m, v in scores.items() if m != member and v is not None]
        ranks = es.policy == ASHA or es.keep_fraction is not None
        if ranks:  # the other members of the sweep that recorded this check already
            try:
                with self.sessions() as s:
                    others = store.sweep_scores_at(s, self.sweep_ids[member], es.score_metric, step,
                                                   [exp_id for exp_id, _ in self.claims])
                peers += list(others.values())
            except DATABASE_DOWN:
                log.warning("check of %s at step %d: the other members' scores are unavailable; "
                            "it is kept", self.claims[member][0], step)
                return []
        decision = decide(es, step, own, value, peers)
        if decision.prune:
            self.pruned[member] = {"policy": es.policy, "step": step, "score": decision.score,
                                   "reason": decision.reason}
            log.info("member %s pruned at step %d: %s", self.claims[member][0], step, decision.reason)
        if es.policy == GROKKING_AWARE and own is not None:
            return [{"step": step, "member": 0, "name": es.score_metric, "value": own["will_generalize"]}]
        return []

    def members_to_stop(self) -> dict[int, str]:
        return {member: PRUNED for member in self.pruned}

    def summary_of(self, member: int) -> dict[str, Any]:
        """What the member's summary carries: its last forecast, and why it was pruned."""
        self._forecast_now(member)
        extra: dict[str, Any] = {}
        if member in self.latest:
            extra["forecast"] = self.latest[member]
        if member in self.pruned:
            extra["pruning"] = self.pruned[member]
        return extra

    def flush(self, member: int | None = None) -> None:
        """Store the forecasts not stored yet; with `member` (before it finishes), its forecast
        at its last evaluation first."""
        if member is not None:
            self._forecast_now(member)
        if self._unstored:
            self._store_forecasts()

    def _forecast_now(self, member: int) -> None:
        """The member's forecast at its last evaluation, if not made yet."""
        points = self.series[member].get("val_acc")
        if not points or not self.forecasting[member] or member in self.pruned:
            return
        step = points[-1][0]
        if (self.latest.get(member) or {}).get("step") != step:
            found = forecast(self.series[member], step)
            if found is not None:
                self.latest[member] = self._unstored[member] = found

    def _store_forecasts(self) -> None:
        self._stored_at = self.clock()
        try:
            with self.sessions() as s:
                store.set_forecasts(s, {self.claims[m]: f for m, f in self._unstored.items()})
            self._unstored.clear()
        except DATABASE_DOWN:  # advisory: tried again after the next evaluation
            log.warning("forecasts of job %s not stored (database unavailable)", self.claims[0][0])


def _at(points: list[tuple[int, float]], step: int) -> float | None:
    for s, v in reversed(points):
        if s == step:
            return v
    return None
