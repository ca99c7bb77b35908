"""Run one job, the unit of work on the queue: claim its members, train them together, finish
each. A job is one experiment (a pack of one) or a sweep's pack; both take this one path:

    claim (store.claim_job) -> build the Trainer from the member specs (or resume it from their
    checkpoints at the latest step all of them have) -> train with one JobRecorder and one
    heartbeat -> each member finishes when it leaves the batch or when the run ends.

A job that raises fails every member still training, with the reason; a job past its time limit
fails the same way and keeps its metrics and checkpoints.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.contract.settings import Settings, get_settings
from service.contract.spec import ExperimentSpec
from worker.alerts import WebhookSender, experiment_alerts
from worker.analysis.callback import analysis_callback
from worker.db import sessions_for
from worker.outage import DATABASE_DOWN
from worker.processes import ThreadShare
from worker.pruning import MemberForecasts
from worker.recorder import JobRecorder
from worker.timing import JobClock

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500
# Picks per message: a pick lost to another worker's claim (or a job out of attempts) is
# followed by the next fair one, a few times.
MAX_PICKS = 5


def job_error(exc: BaseException) -> str:
    """What a user reads of a failed job: one line, the exception's type and message, at most
    MAX_ERROR_CHARS. The traceback (file paths, code) goes to the worker's log only."""
    line = " ".join(f"{type(exc).__name__}: {exc}".split())
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 1] + "…"


@contextmanager
def heartbeating(beat: Callable[[], None], every_s: float, name: str):
    """Call beat() every `every_s` seconds in a thread, so that a long step or a long analysis
    never looks like a dead worker. A failing beat is logged; the next one tries again."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every_s):
            try:
                beat()
            except DATABASE_DOWN as exc:  # an outage: the next beat tries again
                log.warning("heartbeat of %s failed: database unavailable (%s)",
                            name, type(exc).__name__)
            except Exception:  # the next beat tries again
                log.exception("heartbeat of %s failed", name)

    thread = threading.Thread(target=loop, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=every_s + 5)


class TimeLimitExceeded(Exception):
    """The job ran past its time limit (service.contract.budgets.time_limit_s)."""


def deadline_check(
    specs: list[ExperimentSpec], settings: Settings, ran_before_s: float = 0.0,
) -> Callable[[], None]:
    """A check to call before each step: raises TimeLimitExceeded once the job has run past
    its time limit: GROKLAB_TIME_LIMIT_FLOOR_S + GROKLAB_TIME_LIMIT_S_PER_COMPUTE x the compute
    of its members (one limit for the whole job). The limit counts the running time of every
    attempt: ran_before_s, what the earlier ones ran (the members' run_s), and this one's."""
    from service.contract.budgets import compute, time_limit_s

    limit = time_limit_s(specs[0], settings)
    if limit is not None:
        limit += settings.time_limit_s_per_compute * sum(compute(s) for s in specs[1:])
    started = time.monotonic() - ran_before_s

    def check() -> None:
        if limit is not None and time.monotonic() - started > limit:
            raise TimeLimitExceeded(
                f"the job ran past its time limit of {limit:.0f} s, counted over all its "
                f"attempts (GROKLAB_TIME_LIMIT_FLOOR_S "
                f"{settings.time_limit_floor_s:g} + GROKLAB_TIME_LIMIT_S_PER_COMPUTE "
                f"{settings.time_limit_s_per_compute:g} x its compute); its metrics and "
                "checkpoints are kept"
            )

    return check


def run_job(job_id: str, worker_name: str = "worker", settings: Settings | None = None) -> str:
    """Run a job of the queue that the message naming `job_id` came on. The message only wakes
    this worker: it claims the next job in fair order (service.store.scheduling), which may be
    another than the one named; with nothing queued there, it does nothing."""
    settings = settings or get_settings()
    sessions = sessions_for(settings)
    with sessions() as s:
        found = store.job_state(s, job_id)
    if found is None:
        log.info("job %s not claimable (missing); nothing to do", job_id)
        return "skipped:missing"
    queue, state = found
    if state != "queued":  # a redelivered message, or a job another message's worker took
        log.info("job %s not claimable (%s); the next fair job instead", job_id, state)
    result = "skipped:nothing queued"
    for _ in range(MAX_PICKS):
        with sessions() as s:
            pick = store.next_fair_job(s, queue)
        if pick is None:
            log.info("woken by %s: nothing queued on %r", job_id, queue)
            return result
        if pick != job_id:
            log.info("woken by %s on %r: job %s is next in fair order", job_id, queue, pick)
        result = run_claimed_job(pick, worker_name, settings)
        if not result.startswith("skipped"):
            return result
    return result


def run_claimed_job(job_id: str, worker_name: str, settings: Settings) -> str:
    """Claim this very job's queued members, train them, finish each. Returns a word for the
    task's log: "skipped:<state>", "lost" (requeued while it ran), "failed", or, for a job of
    one experiment, its final status ("succeeded", "cancelled", "failed"); "succeeded" for a
    pack that ran to its end."""
    sessions = sessions_for(settings)
    with sessions() as s:
        members = store.claim_job(s, job_id, worker_name)
        if not members:
            found = store.job_state(s, job_id)
            state = found[1] if found else "missing"
            log.info("job %s not claimable (%s); nothing to do", job_id, state)
            return f"skipped:{state}"
        claims = [(m.id, m.attempt) for m in members]
        specs = [ExperimentSpec.model_validate(m.spec) for m in members]
        sender = WebhookSender.for_settings(settings)
        alerts = [experiment_alerts(s, m, spec, sender) for m, spec in zip(members, specs)]
    log.info("claimed job %s: %d member(s) on %s (attempts %s)", job_id, len(claims), worker_name,
             sorted({attempt for _, attempt in claims}))
    recorder = JobRecorder(
        sessions, claims, rows_per_member=[spec.ensemble.size for spec in specs],
        flush_every_s=settings.metrics_flush_s, alerts=alerts, patience_s=settings.db_outage_s,
        retention=store.CheckpointRetention.from_settings(settings),
    )
    raised, clock = False, JobClock()
    ran_before_s = max(m.run_s or 0.0 for m in members)  # by earlier attempts
    check_deadline = deadline_check(specs, settings, ran_before_s)
    share = ThreadShare.from_env()

    def poll() -> None:  # before every step: the time limit, then the idle cores' share
        check_deadline()
        if share is not None:
            share.adjust()

    try:
        with heartbeating(recorder.beat, settings.heartbeat_s, job_id), share or nullcontext():
            _train(specs, recorder, sessions, poll, clock, settings.torch_compile)
    except Exception as exc:
        raised = True  # every member still training fails with the reason
        log.exception("job %s failed", job_id)
        try:
            recorder.flush()
        except Exception:
            log.exception("could not flush the last metrics of job %s", job_id)
        with clock.phase("finish"):
            recorder.finish_all("failed", stopped="error", error=job_error(exc))
    finally:
        sender.close()
    log.info("job %s, %d member(s), took %s; timing %s", job_id, len(claims), clock.describe(),
             json.dumps(clock.report()))
    if len(recorder.lost) == len(claims):
        return "lost"  # requeued while we ran: the next attempt finishes it
    if len(claims) == 1:
        return recorder.outcomes.get(0, "lost")
    return "failed" if raised else "succeeded"


def resume_point(session: Session, experiment_ids: list[str]) -> tuple[int | None, list[bytes] | None]:
    """The latest checkpoint step that every member has, and each member's checkpoint there
    (verified: a corrupt one raises CheckpointCorrupt, which fails the job rather than training
    from garbage); (None, None) when they have none in common: the job starts from step 0."""
    steps = [{c.step for c in store.list_checkpoints(session, exp_id)} for exp_id in experiment_ids]
    shared = set.intersection(*steps) if steps else set()
    if not shared:
        return None, None
    step = max(shared)
    return step, [store.load_checkpoint_verified(session, exp_id, step) for exp_id in experiment_ids]


def member_forecasts(
    sessions: sessionmaker[Session], recorder: JobRecorder, specs: list[ExperimentSpec],
    resume_step: int | None,
) -> MemberForecasts:
    """The job's forecasts and early stopping (worker.pruning), with the series recorded before
    a resume (the forecast reads each member's whole run since memorisation)."""
    with sessions() as s:
        sweep_ids = store.sweep_ids(s, recorder.ids)
    forecasts = MemberForecasts.for_job(sessions, recorder.claims, specs, sweep_ids)
    if resume_step is not None:
        with sessions() as s:
            forecasts.load_history({
                member: {
                    series["name"]: [(st, v) for st, v in zip(series["steps"], series["values"])
                                     if v is not None and st <= resume_step]
                    for series in store.query_metrics(s, exp_id, names=sorted(forecasts.names),
                                                      max_points=None, member=0)["series"]
                }
                for member, exp_id in enumerate(recorder.ids)
            })
    return forecasts


def _train(
    specs: list[ExperimentSpec], recorder: JobRecorder, sessions: sessionmaker[Session],
    poll: Callable[[], None], clock: JobClock, torch_compile: str = "off",
) -> None:
    """Train the job's members, calling poll() before every step (it raises past the time
    limit) and timing each phase on `clock`; torch_compile is GROKLAB_TORCH_COMPILE (auto: on
    CUDA only)."""
    from worker.engine.compiled import compile_wanted
    from worker.engine.train import Trainer, resolve_device

    with clock.phase("setup"):
        compile_model = compile_wanted(torch_compile, resolve_device(specs[0].training.device))
        with sessions() as s:
            resume_step, blobs = resume_point(s, recorder.ids)
        if blobs is not None:
            trainer = Trainer.from_member_checkpoints(specs, blobs, compile_model=compile_model)
            log.info("job of %s resumes at step %d", recorder.ids[0], trainer.step)
        else:
            trainer = Trainer.for_members(specs, compile_model=compile_model)
        recorder.forecasts = member_forecasts(sessions, recorder, specs, resume_step)
    clock.instrument(trainer)
    recorder.trainer, recorder.resumed_from_step = trainer, resume_step
    for member, alerts in enumerate(recorder.alerts):
        alerts.resume(trainer, rows=trainer.rows_of(member))

    def should_stop() -> bool:
        poll()  # past the time limit: raises, and the members fail with the reason
        return recorder.should_stop()

    trainer.run(
        on_metrics=clock.timed("recording", recorder.on_metrics),
        on_checkpoint=clock.timed("checkpoints", recorder.on_checkpoint),
        should_stop=clock.timed("control", should_stop),
        on_progress=clock.timed("recording", recorder.on_progress),
        on_analysis=clock.timed("analysis", analysis_callback(trainer.spec, recorder.store_measures)),
        members_to_stop=clock.timed("control", recorder.members_to_stop),
        on_member_left=clock.timed("control", recorder.on_member_left),
    )
    with clock.phase("recording"):
        recorder.flush()
    with clock.phase("finish"):
        recorder.finish_all("succeeded", stopped="completed")
