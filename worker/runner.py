"""Run one experiment job: claim it, build the engine from its spec, train with a recorder,
finish it. A requeued job resumes from its latest checkpoint."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.infra.db import make_engine, make_sessionmaker
from service.contract.settings import Settings, get_settings
from service.contract.spec import ExperimentSpec
from service.store.summary import experiment_summary
from worker.analysis.callback import analysis_callback, member_measures
from worker.alerts import ExperimentAlerts, WebhookSender, experiment_alerts
from worker.outage import DATABASE_DOWN, with_retries
from worker.recorder import Recorder

log = logging.getLogger(__name__)

_sessionmakers: dict[str, sessionmaker[Session]] = {}


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    url = settings.resolved_database_url
    if url not in _sessionmakers:
        _sessionmakers[url] = make_sessionmaker(make_engine(url))
    return _sessionmakers[url]


def analyze_checkpoint(experiment_id: str, step: int, settings: Settings | None = None) -> str:
    """Compute and cache the analysis of one stored checkpoint (the on-demand API path)."""
    from worker.engine.train import Trainer

    sessions = sessions_for(settings or get_settings())
    with sessions() as s:
        if store.get_cached_analysis(s, experiment_id, step) is not None:
            return "cached"
        exp = store.get_experiment(s, experiment_id)
        if exp is None:
            return "missing"
        spec = ExperimentSpec.model_validate(exp.spec)
        if spec.fourier_unavailable() is not None:
            return "not-applicable"
        try:
            blob = store.load_checkpoint_verified(s, experiment_id, step)
        except store.CheckpointCorrupt as exc:
            # No retry can mend stored bytes: the failure is final at once.
            store.fail_cached_analysis(s, experiment_id, step, str(exc), final=True)
            return "corrupt"
        if blob is None:
            store.fail_cached_analysis(s, experiment_id, step, f"no checkpoint at step {step}")
            return "missing"
    try:
        trainer = Trainer.from_checkpoint(spec, blob)
        document = {"step": trainer.step, "members": member_measures(spec, trainer)}
    except Exception as exc:  # cached with its reason; a later request may retry it
        log.exception("analysis of %s at step %d failed", experiment_id, step)
        with sessions() as s:
            store.fail_cached_analysis(s, experiment_id, step, f"{type(exc).__name__}: {exc}")
        return "failed"
    with sessions() as s:
        store.put_cached_analysis(s, experiment_id, step, document)
    return "computed"


MAX_ERROR_CHARS = 500


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


# Picks per message: a pick lost to another worker's claim (or a job out of attempts) is
# followed by the next fair one, a few times.
MAX_PICKS = 5


def run_job(job_id: str, worker_name: str = "worker", settings: Settings | None = None) -> str:
    """Run a job of the queue that the message naming `job_id` came on. The message only wakes
    this worker: it claims the next job in fair order (service.store.scheduling), which may be
    another than the one named; with nothing queued there, it does nothing."""
    settings = settings or get_settings()
    sessions = sessions_for(settings)
    with sessions() as s:
        found = store.job_state(s, job_id)
    if found is None:
        log.info("experiment %s not claimable (missing); nothing to do", job_id)
        return "skipped:missing"
    queue, state = found
    if state != "queued":  # a redelivered message, or a job another message's worker took
        log.info("experiment %s not claimable (%s); the next fair job instead", job_id, state)
    result = "skipped:nothing queued"
    for _ in range(MAX_PICKS):
        with sessions() as s:
            pick = store.next_fair_job(s, queue)
        if pick is None:
            log.info("woken by %s: nothing queued on %r", job_id, queue)
            return result
        if pick != job_id:
            log.info("woken by %s on %r: job %s is next in fair order", job_id, queue, pick)
        result = run_one_job(pick, worker_name, settings)
        if not result.startswith("skipped"):
            return result
    return result


def run_one_job(job_id: str, worker_name: str, settings: Settings) -> str:
    """Claim and run this very job: a pack of sweep members (worker.packs), or one experiment."""
    sessions = sessions_for(settings)
    with sessions() as s:
        pack = store.is_pack(s, job_id)
    if pack:
        from worker.packs import run_pack

        return run_pack(job_id, worker_name, sessions, settings, heartbeating)
    return run_experiment(job_id, worker_name, settings, sessions)


class TimeLimitExceeded(Exception):
    """The job ran past its time limit (service.budgets.time_limit_s)."""


def deadline_check(
    spec: ExperimentSpec | list[ExperimentSpec], settings: Settings
) -> Callable[[], None]:
    """A check to call before each step: raises TimeLimitExceeded once the job has run past
    its time limit (GROKLAB_TIME_LIMIT_FLOOR_S + GROKLAB_TIME_LIMIT_S_PER_COMPUTE x compute).
    A pack (a list of member specs) has one limit: the floor plus its members' compute."""
    from service.contract.budgets import compute, time_limit_s

    specs = spec if isinstance(spec, list) else [spec]
    limit = time_limit_s(specs[0], settings)
    if limit is not None:
        limit += settings.time_limit_s_per_compute * sum(compute(s) for s in specs[1:])
    started = time.monotonic()

    def check() -> None:
        if limit is not None and time.monotonic() - started > limit:
            raise TimeLimitExceeded(
                f"the job ran past its time limit of {limit:.0f} s (GROKLAB_TIME_LIMIT_FLOOR_S "
                f"{settings.time_limit_floor_s:g} + GROKLAB_TIME_LIMIT_S_PER_COMPUTE "
                f"{settings.time_limit_s_per_compute:g} x its compute); its metrics and "
                "checkpoints are kept"
            )

    return check


def run_experiment(
    experiment_id: str, worker_name: str, settings: Settings, sessions: sessionmaker[Session]
) -> str:
    """Claim one experiment, train it with a recorder, finish it."""
    with sessions() as s:
        exp = store.claim_experiment(s, experiment_id, worker_name)
        if exp is None:
            current = store.get_experiment(s, experiment_id)
            state = current.status if current else "missing"
            log.info("experiment %s not claimable (%s); nothing to do", experiment_id, state)
            return f"skipped:{state}"
        attempt = exp.attempt
        log.info("claimed %s (attempt %d) on %s", experiment_id, attempt, worker_name)
        spec = ExperimentSpec.model_validate(exp.spec)
        sender = WebhookSender.for_settings(settings)
        alerts = experiment_alerts(s, exp, spec, sender)

    recorder = Recorder(
        sessions, experiment_id, attempt,
        total_steps=spec.training.steps, flush_every_s=settings.metrics_flush_s,
        patience_s=settings.db_outage_s,
        retention=store.CheckpointRetention.from_settings(settings),
    )
    def beat() -> None:
        if recorder.lost:
            return
        with sessions() as s:
            if not store.heartbeat(s, experiment_id, attempt):
                recorder.lose()

    try:
        with heartbeating(beat, settings.heartbeat_s, experiment_id):
            return _train(spec, experiment_id, attempt, recorder, sessions, alerts,
                          deadline_check(spec, settings))
    except Exception as exc:  # the job fails cleanly; the worker lives on
        log.exception("experiment %s failed", experiment_id)
        try:
            recorder.flush()
        except Exception:
            log.exception("could not flush the last metrics of %s", experiment_id)
        error = job_error(exc)

        def fail() -> None:
            with sessions() as s:
                if store.finish_experiment(s, experiment_id, attempt, "failed", error=error):
                    alerts.finish("failed", error=error)
            recorder.announce_status()

        with_retries(fail, f"failing {experiment_id}", settings.db_outage_s)
        return "failed"
    finally:
        sender.close()


def _train(
    spec: ExperimentSpec, experiment_id: str, attempt: int, recorder: Recorder,
    sessions: sessionmaker[Session], alerts: ExperimentAlerts,
    check_deadline: Callable[[], None] = lambda: None,
) -> str:
    from worker.engine.train import Trainer

    def should_stop() -> bool:
        check_deadline()  # past the time limit: raises, and the job fails with the reason
        return recorder.should_stop()

    with sessions() as s:
        # A requeued job resumes from its latest checkpoint; a corrupted one fails the job
        # (CheckpointCorrupt says which step and why) instead of training from garbage.
        resume_blob = store.load_checkpoint_verified(s, experiment_id)
    resume_step = None
    if resume_blob is not None:
        trainer = Trainer.from_checkpoint(spec, resume_blob)
        resume_step = trainer.step
        log.info("experiment %s resumes at step %d (attempt %d)", experiment_id, trainer.step, attempt)
    else:
        trainer = Trainer(spec)
    alerts.resume(trainer)
    result = trainer.run(
        on_metrics=alerts.watching(recorder.on_metrics),
        on_checkpoint=recorder.on_checkpoint,
        should_stop=should_stop,
        on_progress=recorder.on_progress,
        on_analysis=analysis_callback(spec, recorder.on_measures),
    )
    recorder.flush()
    if recorder.lost:
        return "lost"  # requeued while we ran: the job's next attempt finishes it
    status = "cancelled" if result.get("stopped") == "cancelled" else "succeeded"

    def finish() -> None:
        with sessions() as s:
            summary = experiment_summary(s, experiment_id)
            summary["stopped"] = result.get("stopped")
            summary["resumed_from_step"] = resume_step
            if store.finish_experiment(s, experiment_id, attempt, status, summary=summary):
                alerts.finish(status, summary)
            store.apply_retention(s, experiment_id, recorder.retention)  # with the final memorisation, generalisation
        recorder.announce_status()

    with_retries(finish, f"finishing {experiment_id}", recorder.patience_s)
    return status
