"""Run one experiment job: claim it, build the engine from its spec, train with a recorder,
finish it. A requeued job resumes from its latest checkpoint."""
from __future__ import annotations

import logging
import threading
import traceback
from contextlib import contextmanager
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.db import make_engine, make_sessionmaker
from service.settings import Settings, get_settings
from service.spec import ExperimentSpec
from service.summary import experiment_summary
from worker.analysis.callback import analysis_callback, member_measures
from worker.alerts import ExperimentAlerts, WebhookSender, experiment_alerts
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
            store.put_cached_analysis(s, experiment_id, step, {"step": step, "error": str(exc)})
            return "corrupt"
        if blob is None:
            return "missing"
    trainer = Trainer.from_checkpoint(spec, blob)
    document = {"step": trainer.step, "members": member_measures(spec, trainer)}
    with sessions() as s:
        store.put_cached_analysis(s, experiment_id, step, document)
    return "computed"


@contextmanager
def heartbeating(beat: Callable[[], None], every_s: float, name: str):
    """Call beat() every `every_s` seconds in a thread, so that a long step or a long analysis
    never looks like a dead worker. A failing beat is logged; the next one tries again."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every_s):
            try:
                beat()
            except Exception:  # the database may blip; the next beat tries again
                log.exception("heartbeat of %s failed", name)

    thread = threading.Thread(target=loop, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=every_s + 5)


def run_job(job_id: str, worker_name: str = "worker", settings: Settings | None = None) -> str:
    """Run the job a queue message names: a pack of sweep members (worker.packs), or one
    experiment."""
    settings = settings or get_settings()
    sessions = sessions_for(settings)
    with sessions() as s:
        pack = store.is_pack(s, job_id)
    if pack:
        from worker.packs import run_pack

        return run_pack(job_id, worker_name, sessions, settings, heartbeating)
    return run_experiment(job_id, worker_name, settings, sessions)


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
    )
    def beat() -> None:
        if recorder.lost:
            return
        with sessions() as s:
            if not store.heartbeat(s, experiment_id, attempt):
                recorder.lose()

    try:
        with heartbeating(beat, settings.heartbeat_s, experiment_id):
            return _train(spec, experiment_id, attempt, recorder, sessions, alerts)
    except Exception as exc:  # the job fails cleanly; the worker lives on
        log.exception("experiment %s failed", experiment_id)
        try:
            recorder.flush()
        except Exception:
            log.exception("could not flush the last metrics of %s", experiment_id)
        with sessions() as s:
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            if store.finish_experiment(s, experiment_id, attempt, "failed", error=error[-4000:]):
                alerts.finish("failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        sender.close()


def _train(
    spec: ExperimentSpec, experiment_id: str, attempt: int, recorder: Recorder,
    sessions: sessionmaker[Session], alerts: ExperimentAlerts,
) -> str:
    from worker.engine.train import Trainer

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
        should_stop=recorder.should_stop,
        on_progress=recorder.on_progress,
        on_analysis=analysis_callback(spec, recorder.on_measures),
    )
    recorder.flush()
    if recorder.lost:
        return "lost"  # requeued while we ran: the job's next attempt finishes it
    status = "cancelled" if result.get("stopped") == "cancelled" else "succeeded"
    with sessions() as s:
        summary = experiment_summary(s, experiment_id)
        summary["stopped"] = result.get("stopped")
        summary["resumed_from_step"] = resume_step
        if store.finish_experiment(s, experiment_id, attempt, status, summary=summary):
            alerts.finish(status, summary)
    return status
