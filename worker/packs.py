"""Run one pack: the members of a sweep whose shapes agree, trained together as one ensemble.

The pack is the unit of work: one queue message (its job id is the pack id), one claim of all its
queued members, one heartbeat, one resume. Everything stored stays per member: each member's
metrics (as member 0), checkpoints and cached analysis go under its own experiment, so nothing
stored grows with the pack size, and every member reads like a run of its own.

A member leaves the batch when it has grokked under stop_on_grok (succeeded), when its loss
became NaN or infinite (failed, with the reason), or when it is cancelled; the pack trains on
with the others. A requeued pack resumes from its members' checkpoints at the latest step that
all of them have.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.infra import events
from service.science.progress import StepRate
from service.contract.spec import ExperimentSpec
from service.store.summary import experiment_summary
from worker.alerts import ExperimentAlerts, WebhookSender, experiment_alerts
from worker.outage import DATABASE_DOWN, with_retries

if TYPE_CHECKING:
    from worker.engine.train import Trainer

log = logging.getLogger(__name__)

LEFT_STATUS = {"grokked": "succeeded", "nonfinite": "failed", "cancelled": "cancelled"}


class PackRecorder:
    """The engine's callbacks for a pack, routed to each member's experiment.

    Engine member e (its place in the pack as claimed) is experiment ids[e]; its rows are stored
    as member 0 of that experiment. Flushes metrics at least every flush_every_s; progress and
    heartbeat of the members still training go in one UPDATE; cancel flags are polled every
    cancel_poll_s. A member whose attempt is no longer ours (requeued, finished elsewhere) is
    stopped without being finished here.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        claims: list[tuple[str, int]],
        *,
        total_steps: int,
        flush_every_s: float = 1.0,
        progress_every_s: float = 1.0,
        cancel_poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        alerts: list[ExperimentAlerts] | None = None,
        patience_s: float = 900.0,
        retention: store.CheckpointRetention | None = None,
    ) -> None:
        self.retention = retention
        self.sessions = sessions
        self.patience_s = patience_s  # how long a write waits out a database outage
        self.alerts = alerts or []  # per member, as claims
        self.claims = list(claims)
        self.ids = [exp_id for exp_id, _ in claims]
        self.member_of = {exp_id: member for member, exp_id in enumerate(self.ids)}
        self.attempt_of = dict(claims)
        self.total_steps = total_steps
        self.flush_every_s = flush_every_s
        self.progress_every_s = progress_every_s
        self.cancel_poll_s = cancel_poll_s
        self.clock = clock
        self.trainer: Trainer | None = None  # set by the pack's run, for store_measures
        self.active: set[int] = set(range(len(claims)))
        self.lost: set[int] = set()
        self.cancelled: set[int] = set()
        self._rows: dict[int, list[dict]] = {}
        self._rate = StepRate(clock=clock)
        now = clock()
        self._last_flush = now
        self._last_progress = -1e18
        self._last_cancel_poll = now
        self._events = events.publisher()  # live events, per member experiment (never fails)

    def active_claims(self) -> list[tuple[str, int]]:
        return [self.claims[e] for e in sorted(self.active)]

    # ---- engine callbacks --------------------------------------------------------------
    def on_metrics(self, rows: list[dict]) -> None:
        for row in rows:
            self._rows.setdefault(row["member"], []).append({**row, "member": 0})
        for member, alerts in enumerate(self.alerts):
            alerts.on_metrics(rows, member=member)
        if self.clock() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_checkpoint(self, step: int, blob: bytes, meta: dict) -> None:
        member = int(meta.get("member", 0))
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
        """The full progress measures of each member still training (in the order of
        self.trainer.members), under its experiment."""
        with self.sessions() as s:
            for row, member in enumerate(self.trainer.members):
                store.put_cached_analysis(
                    s, self.ids[member], step, {"step": step, "members": [measures[row]]}
                )

    def on_progress(self, step: int, total_steps: int) -> None:
        now = self.clock()
        self._rate.observe(step)
        if now - self._last_progress < self.progress_every_s and step < total_steps:
            return
        self._last_progress = now
        claims = self.active_claims()

        def update() -> set[str]:
            with self.sessions() as s:
                return store.update_pack_progress(
                    s, claims, step=step, steps_per_s=self._rate.rate(),
                    eta_s=self._rate.eta_s(step, total_steps),
                )

        if step >= total_steps:  # the last step is recorded whatever it takes
            ours = with_retries(update, "pack progress", self.patience_s)
        else:
            try:
                ours = update()
            except DATABASE_DOWN:  # the next report tries again
                return
        self._lose_all_but(claims, ours)
        for exp_id in ours:
            self._events.status(exp_id)

    def beat(self) -> None:
        """The heartbeat thread's call: every member still training, in one UPDATE."""
        claims = self.active_claims()
        with self.sessions() as s:
            ours = store.pack_heartbeat(s, claims)
        self._lose_all_but(claims, ours)

    def members_to_stop(self) -> set[int]:
        """Members to take out of the batch now: cancelled, or no longer this worker's."""
        now = self.clock()
        if now - self._last_cancel_poll >= self.cancel_poll_s:
            self._last_cancel_poll = now
            try:
                with self.sessions() as s:
                    flagged = store.cancel_requested_members(
                        s, [self.ids[e] for e in sorted(self.active)]
                    )
            except DATABASE_DOWN:  # asked again at the next poll
                flagged = set()
            self.cancelled |= {self.member_of[exp_id] for exp_id in flagged}
        return (self.cancelled | self.lost) & self.active

    def should_stop(self) -> bool:
        return not self.active

    def on_member_left(self, member: int, reason: str, step: int) -> None:
        """A member left the batch: store its last points and finish it with its reason."""
        self.active.discard(member)
        self.flush()
        if member in self.lost:
            return
        if reason == "cancelled" or member in self.cancelled:
            self.finish(member, "cancelled", stopped="cancelled")
        elif reason == "nonfinite":
            self.finish(member, "failed", stopped="nonfinite", error=(
                f"the training loss became NaN or infinite by step {step}; this member left its "
                "pack and the others trained on (lower optimizer.lr or model.init_scale)"
            ))
        else:
            self.finish(member, LEFT_STATUS.get(reason, "succeeded"), stopped=reason)

    # ---- helpers -------------------------------------------------------------------------
    def _lose_all_but(self, claims: list[tuple[str, int]], ours: set[str]) -> None:
        """Members of `claims` that a progress or heartbeat UPDATE no longer found ours."""
        self._lose({self.member_of[exp_id] for exp_id, _ in claims if exp_id not in ours})

    def _lose(self, members: set[int]) -> None:
        for member in members - self.lost:
            log.warning("pack member %s attempt %s is no longer ours; it leaves the pack",
                        self.ids[member], self.attempt_of[self.ids[member]])
        self.lost |= members

    def flush(self) -> None:
        """Store every buffered row, waiting out a database outage; a member's rows leave the
        buffer once stored (stored twice is harmless: ingestion skips the points it has)."""
        self._last_flush = self.clock()
        for member in list(self._rows):
            exp_id = self.ids[member]

            def ingest() -> None:
                with self.sessions() as s:
                    store.ingest_metrics(
                        s, exp_id, self._rows[member], attempt=self.attempt_of[exp_id]
                    )

            with_retries(ingest, f"metrics of {exp_id}", self.patience_s)
            self._events.metrics(exp_id, max(row["step"] for row in self._rows[member]))
            del self._rows[member]

    def finish(self, member: int, status: str, *, stopped: str, error: str | None = None,
               resumed_from_step: int | None = None) -> bool:
        exp_id = self.ids[member]

        def end() -> tuple[bool, dict]:
            with self.sessions() as s:
                summary = experiment_summary(s, exp_id)
                summary["stopped"] = stopped
                summary["resumed_from_step"] = resumed_from_step
                return store.finish_experiment(
                    s, exp_id, self.attempt_of[exp_id], status, error=error, summary=summary
                ), summary

        finished, summary = with_retries(end, f"finishing {exp_id}", self.patience_s)
        self._events.status(exp_id)
        if finished and self.alerts:
            self.alerts[member].finish(status, summary, error)
        return finished


def common_resume_step(steps_by_member: list[set[int]]) -> int | None:
    """The latest checkpoint step that every member has (None: start from step 0)."""
    if not steps_by_member or any(not steps for steps in steps_by_member):
        return None
    shared = set.intersection(*steps_by_member)
    return max(shared) if shared else None


def run_pack(
    pack_id: str, worker_name: str, sessions: sessionmaker[Session], settings: Any,
    heartbeating: Callable[..., Any],
) -> str:
    """Claim the pack's queued members, train them together, finish each. Returns a word for the
    task's log: "skipped", "succeeded" (the pack ran to its end) or "failed"."""
    with sessions() as s:
        members = store.claim_pack(s, pack_id, worker_name)
        if not members:
            log.info("pack %s has no queued member; nothing to do", pack_id)
            return "skipped"
        claims = [(m.id, m.attempt) for m in members]
        specs = [ExperimentSpec.model_validate(m.spec) for m in members]
        steps = [{c.step for c in store.list_checkpoints(s, m.id)} for m in members]
        resume_step = common_resume_step(steps)
        blobs = None
        if resume_step is not None:
            blobs = [store.load_checkpoint_verified(s, m.id, resume_step) for m in members]
        sender = WebhookSender.for_settings(settings)
        alerts = [experiment_alerts(s, m, spec, sender) for m, spec in zip(members, specs)]
    log.info("claimed pack %s: %d members on %s (resume at %s)", pack_id, len(members),
             worker_name, resume_step)

    recorder = PackRecorder(
        sessions, claims, total_steps=specs[0].training.steps,
        flush_every_s=settings.metrics_flush_s, alerts=alerts, patience_s=settings.db_outage_s,
        retention=store.CheckpointRetention.from_settings(settings),
    )
    from worker.runner import deadline_check

    try:
        with heartbeating(recorder.beat, settings.heartbeat_s, pack_id):
            return _train_pack(specs, blobs, recorder, resume_step, deadline_check(specs, settings))
    except Exception as exc:  # every member still training fails with the reason
        log.exception("pack %s failed", pack_id)
        try:
            recorder.flush()
        except Exception:
            log.exception("could not flush the last metrics of pack %s", pack_id)
        from worker.runner import job_error

        error = job_error(exc)
        for member in sorted(recorder.active - recorder.lost):
            recorder.finish(member, "failed", stopped="error", error=error)
        return "failed"
    finally:
        sender.close()


def _train_pack(
    specs, blobs, recorder: PackRecorder, resume_step: int | None,
    check_deadline: Callable[[], None] = lambda: None,
) -> str:
    from worker.engine.train import Trainer
    from worker.analysis.callback import analysis_callback

    def should_stop() -> bool:
        check_deadline()  # past the pack's time limit: raises, and its members fail with the reason
        return recorder.should_stop()

    if blobs is not None:
        trainer = Trainer.from_member_checkpoints(specs, blobs)
    else:
        trainer = Trainer.for_members(specs)
    recorder.trainer = trainer
    for member, alerts in enumerate(recorder.alerts):
        alerts.resume(trainer, rows=[member])
    trainer.run(
        on_metrics=recorder.on_metrics,
        on_checkpoint=recorder.on_checkpoint,
        should_stop=should_stop,
        on_progress=recorder.on_progress,
        on_analysis=analysis_callback(trainer.spec, recorder.store_measures),
        members_to_stop=recorder.members_to_stop,
        on_member_left=recorder.on_member_left,
    )
    recorder.flush()
    for member in sorted(recorder.active - recorder.lost):
        recorder.finish(member, "succeeded", stopped="completed", resumed_from_step=resume_step)
    return "succeeded"
