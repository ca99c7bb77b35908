"""The bridge between the engine's callbacks and the database, for every job: one experiment or a
pack of them.

The engine reports per ensemble row; the recorder routes each row to its (experiment, attempt,
member): row g of the trainer is member `g - offset` of the experiment that owns it (a pack of
single runs: member 0 of experiment g; one experiment of E rows: member g of it). It batches
metric rows and flushes them at least every flush_every_s (and at every checkpoint, when a member
leaves, and at the end), stores each member's checkpoints and cached analysis under its own
experiment, updates progress and the heartbeat of the members still training in one UPDATE, and
polls their cancel flags. Its writes carry each member's attempt: a member requeued and claimed
again elsewhere is lost here (it leaves the batch, unfinished) and stores nothing more.

One outage policy (worker.outage) for every job: through a database outage the metric rows wait
in the buffer and training goes on; a checkpoint, a member's analysis, a member's end, and the
last flush wait for the database, for up to patience_s; only then does the job fail.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.infra import events
from service.science.progress import StepRate
from service.store.summary import experiment_summary
from worker.alerts import ExperimentAlerts
from worker.outage import DATABASE_DOWN, Backoff, with_retries

if TYPE_CHECKING:
    from worker.engine.train import Trainer
    from worker.pruning import MemberForecasts

log = logging.getLogger(__name__)

LEFT_STATUS = {"grokked": "succeeded", "nonfinite": "failed", "cancelled": "cancelled", "pruned": "pruned"}


class JobRecorder:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        claims: list[tuple[str, int]],
        *,
        rows_per_member: list[int] | None = None,
        flush_every_s: float = 1.0,
        progress_every_s: float = 1.0,
        cancel_poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        alerts: list[ExperimentAlerts] | None = None,
        patience_s: float = 900.0,
        retention: store.CheckpointRetention | None = None,
        resumed_from_step: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.claims = list(claims)
        self.ids = [exp_id for exp_id, _ in claims]
        self.attempt_of = dict(claims)
        self.member_of = {exp_id: member for member, exp_id in enumerate(self.ids)}
        sizes = rows_per_member or [1] * len(claims)
        self.route = [(m, r) for m, size in enumerate(sizes) for r in range(size)]  # row -> (member, its row)
        self.alerts = alerts or []
        self.patience_s = patience_s
        self.retention = retention
        self.resumed_from_step = resumed_from_step
        self.flush_every_s = flush_every_s
        self.progress_every_s = progress_every_s
        self.cancel_poll_s = cancel_poll_s
        self.clock = clock
        self.trainer: Trainer | None = None  # set by the job's run, for store_measures
        self.forecasts: MemberForecasts | None = None  # forecasts and early stopping (worker.pruning)
        self.active: set[int] = set(range(len(claims)))
        self.lost: set[int] = set()
        self.stop_reason: dict[int, str] = {}  # member -> "cancelled" | "paused", as asked
        self.outcomes: dict[int, str] = {}  # member -> the status it finished with
        self._rows: dict[int, list[dict]] = {}
        self._backoff = Backoff(clock)
        self._rate = StepRate(clock=clock)
        now = clock()
        self._last_flush = now
        self._last_progress = -1e18
        self._last_cancel_poll = now
        self._ran_until = now  # running time up to here is stored (members' run_s)
        self._events = events.publisher()  # live events, per member experiment (never fails)

    def active_claims(self) -> list[tuple[str, int]]:
        return [self.claims[m] for m in sorted(self.active - self.lost)]

    # ---- engine callbacks --------------------------------------------------------------
    def on_metrics(self, rows: list[dict]) -> None:
        routed: dict[int, list[dict]] = {}
        for row in rows:
            member, member_row = self.route[row["member"]]
            routed.setdefault(member, []).append({**row, "member": member_row})
        if self.forecasts is not None:  # the checks' scores are recorded beside the metrics
            for member, scores in self.forecasts.observe(routed).items():
                routed[member].extend(scores)
        for member, member_rows in routed.items():
            self._rows.setdefault(member, []).extend(member_rows)
            if member < len(self.alerts):
                self.alerts[member].on_metrics(member_rows)
        if self.clock() - self._last_flush >= self.flush_every_s and self._backoff.ready():
            self._last_flush = self.clock()
            try:
                self._store_rows()
            except DATABASE_DOWN as exc:  # keep training; the rows wait in the buffer
                self._backoff.failed()
                log.warning("job of %s: database unavailable (%s); %d metric rows buffered",
                            self.ids[0], type(exc).__name__, sum(map(len, self._rows.values())))
                if self._backoff.down_for() > self.patience_s:
                    raise
            else:
                self._backoff.succeeded()

    def on_checkpoint(self, step: int, blob: bytes, meta: dict) -> None:
        member = int(meta.get("member", 0))
        # Metrics first: a job resumed from this checkpoint then has every point up to it.
        self.flush()
        stored = {k: v for k, v in meta.items() if k != "member"}
        exp_id = self.ids[member]

        def add() -> object:
            with self.sessions() as s:
                return store.add_checkpoint(
                    s, exp_id, step, blob, stored, retention=self.retention,
                    attempt=self.attempt_of[exp_id],
                )

        if with_retries(add, f"checkpoint {step} of {exp_id}", self.patience_s) is None:
            self._lose({member})

    def store_measures(self, step: int, measures: list[dict]) -> None:
        """The full progress measures of every current ensemble row (in trainer.members order),
        each member's rows under its experiment (for GET .../analysis)."""
        by_member: dict[int, list[dict]] = {}
        for row, measure in zip(self.trainer.members, measures):
            by_member.setdefault(self.route[row][0], []).append(measure)

        def put() -> None:
            with self.sessions() as s:
                for member, member_measures in by_member.items():
                    store.put_cached_analysis(
                        s, self.ids[member], step, {"step": step, "members": member_measures}
                    )

        with_retries(put, f"analysis {step} of job {self.ids[0]}", self.patience_s)

    def on_progress(self, step: int, total_steps: int) -> None:
        self._rate.observe(step)
        now = self.clock()
        if now - self._last_progress < self.progress_every_s and step < total_steps:
            return
        self._last_progress = now
        claims = self.active_claims()

        def update() -> set[str]:
            with self.sessions() as s:
                return store.update_members_progress(
                    s, claims, step=step, steps_per_s=self._rate.rate(),
                    eta_s=self._rate.eta_s(step, total_steps),
                )

        if step >= total_steps:  # the last step is recorded whatever it takes
            ours = with_retries(update, f"progress of job {self.ids[0]}", self.patience_s)
        else:
            try:
                ours = update()
            except DATABASE_DOWN:  # the next report tries again
                log.warning("job of %s: progress not recorded (database unavailable)", self.ids[0])
                return
        self._lose_all_but(claims, ours)
        for exp_id, _ in claims:
            if exp_id in ours:
                self._events.status(exp_id)

    def beat(self) -> None:
        """The heartbeat of the job: every member still training, in one UPDATE, which also
        adds the time run since the last beat that reached the database to each member's
        run_s (what the time limit counts over every attempt)."""
        claims, now = self.active_claims(), self.clock()
        with self.sessions() as s:
            ours = store.members_heartbeat(s, claims, ran_s=now - self._ran_until)
        self._ran_until = now
        self._lose_all_but(claims, ours)

    def members_to_stop(self) -> dict[int, str]:
        """Members to take out of the batch now, with why: "cancelled", "paused" (both asked
        through the API, polled every cancel_poll_s; either wins over a prune), "pruned" (the
        sweep's early stopping), or "lost" (no longer this worker's)."""
        now = self.clock()
        if now - self._last_cancel_poll >= self.cancel_poll_s:
            self._last_cancel_poll = now
            try:
                with self.sessions() as s:
                    asked = store.stop_requests(s, [self.ids[m] for m in sorted(self.active)])
            except DATABASE_DOWN:  # asked again at the next poll
                asked = {}
            for exp_id, reason in asked.items():
                self.stop_reason.setdefault(self.member_of[exp_id], reason)
                if reason == "cancelled":  # a cancel overrides an earlier pause request
                    self.stop_reason[self.member_of[exp_id]] = reason
        wanted = {m: "lost" for m in self.lost}
        if self.forecasts is not None:  # pruned by the sweep's early stopping
            wanted.update({m: r for m, r in self.forecasts.members_to_stop().items() if m not in self.lost})
        wanted.update({m: r for m, r in self.stop_reason.items() if m not in self.lost})
        return {m: r for m, r in wanted.items() if m in self.active}

    def should_stop(self) -> bool:
        """Stop the whole run: no member of it is still this worker's to train."""
        return not (self.active - self.lost)

    def on_member_left(self, member: int, reason: str, step: int) -> None:
        """A member left the batch: store its last points and finish it with its reason."""
        self.active.discard(member)
        self.flush()
        if member in self.lost:
            return
        claim = [self.claims[member]]

        def record_step() -> set[str]:  # the step it left at, not the last one reported
            with self.sessions() as s:
                return store.update_members_progress(s, claim, step=step, steps_per_s=None, eta_s=None)

        if not with_retries(record_step, f"progress of {self.ids[member]}", self.patience_s):
            self._lose({member})
            return
        if reason == "paused":
            def pause() -> bool:
                with self.sessions() as s:
                    return store.pause_member(s, self.ids[member], self.attempt_of[self.ids[member]], step)

            if with_retries(pause, f"pausing {self.ids[member]}", self.patience_s):
                self.outcomes[member] = "paused"
            self._events.status(self.ids[member])
        elif reason == "cancelled":
            self.finish(member, "cancelled", stopped="cancelled")
        elif reason == "nonfinite":
            others = "; the other members of its job trained on" if len(self.claims) > 1 else ""
            self.finish(member, "failed", stopped="nonfinite", error=(
                f"the training loss became NaN or infinite by step {step}{others} "
                "(lower optimizer.lr or model.init_scale)"
            ))
        else:
            self.finish(member, LEFT_STATUS.get(reason, "succeeded"), stopped=reason)

    # ---- the job's end ----------------------------------------------------------------------
    def finish_all(self, status: str, *, stopped: str, error: str | None = None) -> None:
        """Finish every member still training and still ours (the end of the job, or its failure)."""
        for member in sorted(self.active - self.lost):
            self.finish(member, status, stopped=stopped, error=error)
        self.active.clear()

    def finish(self, member: int, status: str, *, stopped: str, error: str | None = None) -> bool:
        """Finish one member with its summary, then apply checkpoint retention to it (with its
        final memorisation and generalisation steps)."""
        exp_id = self.ids[member]
        if self.forecasts is not None:  # its last forecast on its status too
            self.forecasts.flush(member)

        def end() -> tuple[bool, dict]:
            with self.sessions() as s:
                summary = experiment_summary(s, exp_id)
                summary["stopped"] = stopped
                if self.forecasts is not None:  # the last forecast; why it was pruned
                    summary.update(self.forecasts.summary_of(member))
                summary["resumed_from_step"] = self.resumed_from_step
                finished = store.finish_experiment(
                    s, exp_id, self.attempt_of[exp_id], status, error=error, summary=summary
                )
                if finished:
                    store.apply_retention(s, exp_id, self.retention)
                return finished, summary

        finished, summary = with_retries(end, f"finishing {exp_id}", self.patience_s)
        if finished:
            self.outcomes[member] = status
        self._events.status(exp_id)
        if finished and member < len(self.alerts):
            self.alerts[member].finish(status, summary, error)
        return finished

    def flush(self) -> None:
        """Store every buffered row now, waiting out a database outage."""
        self._last_flush = self.clock()
        if any(self._rows.values()):
            with_retries(self._store_rows, f"metrics of job {self.ids[0]}", self.patience_s)
            self._backoff.succeeded()

    # ---- helpers -------------------------------------------------------------------------
    def _store_rows(self) -> None:
        """One try at storing the buffer; a member's rows leave it once stored (a batch stored
        twice is harmless: ingestion skips the points it has)."""
        for member in list(self._rows):
            rows = self._rows[member]
            if not rows:
                continue
            exp_id = self.ids[member]
            with self.sessions() as s:
                store.ingest_metrics(s, exp_id, rows, attempt=self.attempt_of[exp_id])
            del self._rows[member]
            self._events.metrics(exp_id, max(row["step"] for row in rows))

    def _lose_all_but(self, claims: list[tuple[str, int]], ours: set[str]) -> None:
        """Members of `claims` that a progress or heartbeat UPDATE no longer found ours."""
        self._lose({self.member_of[exp_id] for exp_id, _ in claims if exp_id not in ours})

    def _lose(self, members: set[int]) -> None:
        for member in members - self.lost:
            log.warning("job member %s attempt %s is no longer ours; it leaves the batch",
                        self.ids[member], self.attempt_of[self.ids[member]])
        self.lost |= members
