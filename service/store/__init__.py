"""The store: every read and write of job state, metrics, checkpoints and cached analysis.

Each function takes a SQLAlchemy Session first and commits its own work (reads commit too, so a
long-lived worker session never sits idle inside a transaction). State changes that race (claim,
progress, cancel, finish, requeue) are compare-and-swap UPDATEs: the database, not the broker,
decides which worker runs a job.

One module per concern; callers use this package (`from service import store`):

- experiments: job state and its compare-and-swap transitions, the reaper's and the
  reconciler's queries
- metrics_ingest: metric points in, with the summaries that serve downsampled queries
- metrics_query: metric series out, downsampled on the server
- checkpoints: checkpoint bytes in chunks, verified before they are loaded or served
- retention: which checkpoints an experiment keeps
- series_summary: bounded facts of a whole series (first step reaching a threshold)
- analysis_cache: the cached analysis per checkpoint step and kind (Fourier measures, circuit
  pictures)
- progress_measures: the measures with fixed key frequencies, requested and computed once
- packs: the members of a sweep that train together, claimed and beat as one job
- scheduling: which queued job a woken worker claims next, fairly between owners
- sweeps: a grid of experiments stored at once, its status derived from its members
- pausing: pause and resume of an experiment or of every member of a sweep
- pruning: a sweep's early stopping (the scores of a check, each member's forecast)
- dialect: what differs between PostgreSQL and SQLite
- webhooks: the per-owner secrets that alert webhooks are signed with
- tokens: API tokens, stored by the hash of their secret
- usage: what an owner uses now (active jobs, recent submissions), as the quotas count it
- monitoring: the stack's counts for Prometheus, and the readiness probe
- summary: an experiment's grokking summary and phases, from its stored series (imported from
  its own module, service.store.summary: it reads through the others)
"""
from service.store.analysis_queue import CHECKPOINT as CHECKPOINT_ANALYSIS
from service.store.analysis_queue import MEASURES as PROGRESS_MEASURES_ANALYSIS
from service.store.analysis_queue import AnalysisPick, claim_analysis, next_fair_analysis
from service.store.analysis_cache import (
    AnalysisRequest,
    analysis_pending,
    pending_analyses,
    fail_cached_analysis,
    get_cached_analysis,
    latest_cached_analysis,
    put_cached_analyses,
    put_cached_analysis,
    request_checkpoint_analysis,
    withdraw_analysis_request,
)
from service.store.checkpoints import (
    CheckpointCorrupt,
    add_checkpoint,
    checkpoint_chunks,
    checkpoint_intact,
    get_checkpoint,
    list_checkpoints,
    load_checkpoint_verified,
    read_checkpoint_range,
    verified_checkpoint_head,
    owner_checkpoint_bytes,
    read_checkpoint,
    verified_checkpoint,
)
from service.store.experiments import (
    MAX_STEP,
    ExperimentNotFound,
    create_experiment,
    finish_experiment,
    get_experiment,
    holds_attempt,
    job_queues,
    list_experiments,
    newest_first_page,
    queued_jobs,
    reap_stale_jobs,
    request_cancel,
    requeue_stale_jobs,
    stale_jobs,
    sweep_ids,
)
from service.store.metrics_ingest import MAX_NAME_LENGTH, ingest_metrics
from service.store.metrics_query import count_metric_series, query_metrics
from service.store.monitoring import StackCounts, check_database, stack_counts
from service.store.scheduling import fair_queue, job_state, next_fair_job
from service.store.jobs import (
    Claim,
    cancel_requested,
    cancel_requested_members,
    claim_experiment,
    claim_job,
    heartbeat,
    members_heartbeat,
    pause_member,
    stop_requests,
    update_members_progress,
    update_progress,
)
from service.store.pausing import (
    NotPausable,
    pause_sweep,
    request_pause,
    request_resume,
    resume_paused,
    resume_sweep,
    sweep_resumable,
)
from service.store.progress_measures import (
    PENDING_RETRY_S,
    fail_progress_measures,
    get_progress_measures,
    put_progress_measures,
    request_progress_measures,
    withdraw_progress_measures,
)
from service.store.retention import CheckpointRetention, apply_retention
from service.store.pruning import set_forecasts, sweep_early_stopping, sweep_scores_at
from service.store.sweeps import (
    SweepStatus,
    cancel_sweep,
    create_sweep,
    get_sweep,
    list_sweeps,
    sweep_member_ids,
    sweep_members,
    sweep_status,
    sweep_statuses,
)
from service.store.tokens import (
    add_token,
    count_tokens,
    list_tokens,
    revoke_token_row,
    token_by_hash,
    token_is_live,
    tokens_with_id_prefix,
)
from service.store.usage import active_jobs, owner_lock, submission_times
from service.store.webhooks import (
    get_webhook_secret,
    list_webhook_secrets,
    revoke_webhook_secret,
    set_webhook_secret,
)

__all__ = [
    "CHECKPOINT_ANALYSIS",
    "PROGRESS_MEASURES_ANALYSIS",
    "AnalysisPick",
    "claim_analysis",
    "next_fair_analysis",
    "analysis_pending",
    "pending_analyses",
    "add_token",
    "count_tokens",
    "list_tokens",
    "revoke_token_row",
    "token_by_hash",
    "token_is_live",
    "tokens_with_id_prefix",
    "active_jobs",
    "owner_lock",
    "submission_times",
    "StackCounts",
    "check_database",
    "stack_counts",
    "get_webhook_secret",
    "list_webhook_secrets",
    "revoke_webhook_secret",
    "set_webhook_secret",
    "MAX_NAME_LENGTH",
    "MAX_STEP",
    "CheckpointCorrupt",
    "ExperimentNotFound",
    "SweepStatus",
    "add_checkpoint",
    "AnalysisRequest",
    "apply_retention",
    "checkpoint_chunks",
    "CheckpointRetention",
    "fail_cached_analysis",
    "owner_checkpoint_bytes",
    "read_checkpoint",
    "request_checkpoint_analysis",
    "withdraw_analysis_request",
    "cancel_requested_members",
    "Claim",
    "claim_job",
    "members_heartbeat",
    "pause_member",
    "stop_requests",
    "NotPausable",
    "request_pause",
    "request_resume",
    "resume_paused",
    "pause_sweep",
    "resume_sweep",
    "sweep_resumable",
    "update_members_progress",
    "fair_queue",
    "job_state",
    "next_fair_job",
    "PENDING_RETRY_S",
    "fail_progress_measures",
    "get_progress_measures",
    "put_progress_measures",
    "request_progress_measures",
    "withdraw_progress_measures",
    "cancel_requested",
    "cancel_sweep",
    "create_sweep",
    "get_sweep",
    "list_sweeps",
    "newest_first_page",
    "sweep_member_ids",
    "sweep_members",
    "sweep_status",
    "sweep_statuses",
    "checkpoint_intact",
    "claim_experiment",
    "count_metric_series",
    "create_experiment",
    "finish_experiment",
    "get_cached_analysis",
    "get_checkpoint",
    "get_experiment",
    "heartbeat",
    "ingest_metrics",
    "job_queues",
    "latest_cached_analysis",
    "list_checkpoints",
    "list_experiments",
    "load_checkpoint_verified",
    "read_checkpoint_range",
    "verified_checkpoint_head",
    "put_cached_analyses",
    "put_cached_analysis",
    "queued_jobs",
    "reap_stale_jobs",
    "requeue_stale_jobs",
    "stale_jobs",
    "sweep_ids",
    "holds_attempt",
    "request_cancel",
    "update_progress",
    "verified_checkpoint",
]
