"""One settings object for the whole service, read from GROKLAB_* environment variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GROKLAB_", extra="ignore")

    # Where everything lives in embedded mode (SQLite file, filesystem broker, tokens).
    data_dir: Path = Field(Path("."), description="Folder for the embedded database and broker.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: sqlite:///<data_dir>/groklab.db"
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL. Default: filesystem:// under <data_dir>/.groklab/"
    )

    # Worker behaviour
    worker_queues: str = Field(
        "gpu,cpu,analysis",
        description="Comma-separated queues a worker consumes ('analysis': checkpoint analyses "
        "requested through the API; a worker of its own keeps them from waiting behind training).",
    )
    default_queue: str = Field("cpu", description="Queue for experiments whose device is not 'cuda'.")
    worker_processes: int | None = Field(
        None, ge=1,
        description="Training processes of `groklab worker` (and `groklab up`). Default: one per "
        "core on a CPU host, one per GPU on a GPU host (service/science/worker_plan.py). The API sizes "
        "CPU sweeps' packs by it too: set it there to the worker hosts' count.",
    )
    torch_threads: int | None = Field(
        None, ge=1,
        description="Torch threads of each training process. Default: the cores divided among "
        "the processes (1 on a CPU host: small models gain nothing from more).",
    )
    worker_gpus: int | None = Field(
        None, ge=0,
        description="GPUs of a worker host. Default: those this host has (CUDA_VISIBLE_DEVICES "
        "honoured). The API reads it to size packs of sweeps whose device is 'auto': set it "
        "on an API host without GPUs whose workers have them.",
    )
    visibility_timeout_s: int = Field(
        48 * 3600, description="Redis visibility timeout: longer than the longest job."
    )
    metrics_flush_s: float = Field(1.0, description="Recorder flushes metrics at least this often.")
    heartbeat_s: float = Field(5.0, description="Running jobs update their heartbeat this often.")
    heartbeat_timeout_s: float = Field(
        60.0, description="A running job whose heartbeat is older than this is requeued."
    )
    db_outage_s: float = Field(
        900.0,
        description="How long a worker rides out an unreachable database (retrying its writes "
        "with backoff, buffering metric rows) before the job fails.",
    )
    reconcile_scan_limit: int = Field(
        1000,
        description="Most queued jobs and broker messages the reconciler reads per queue and "
        "tick, oldest first; a queue holding more messages is checked once it drains below.",
    )
    reaper_interval_s: float = Field(
        10.0, description="How often the API process runs the reaper and the reconciler (0: never)."
    )
    reconcile_after_s: float = Field(
        30.0, description="A job queued this long with no broker message is enqueued again."
    )
    torch_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile of the model's forward in training jobs: 'auto' on CUDA "
        "devices only (a GPU pack's step runs ~1.6x faster after ~12 s of compiling; on a CPU "
        "the compiling costs more than it gains), 'on' on every device (a CPU needs a C++ "
        "compiler), 'off' never. Results agree with eager ones within float tolerance; spec "
        "hashes and checkpoints do not change.",
    )

    # Abuse limits
    max_body_bytes: int = Field(256 * 1024, description="Largest accepted request body.")
    body_drain_bytes: int = Field(
        64 * 2**20,
        description="A body over max_body_bytes is read and discarded up to this size before its "
        "413, so that the client gets the answer and not a connection reset; a larger one is "
        "answered at once and its connection closed.",
    )
    max_p: int = Field(1009, description="Largest modulus p a spec may ask for.")
    max_steps: int = Field(1_000_000, description="Most training steps a spec may ask for.")
    max_params: int = Field(50_000_000, description="Most model parameters per ensemble member.")
    max_ensemble: int = Field(256, description="Largest ensemble a spec may ask for.")
    max_data_schedule_stages: int = Field(
        256, ge=1, description="Most stages a spec's data_schedule may have."
    )
    max_spec_bytes: int = Field(
        64 * 1024, ge=1024,
        description="Largest spec as stored (JSON, presets resolved), per experiment and per "
        "sweep member.",
    )
    max_page_size: int = Field(500, description="Largest page of experiments in a list.")
    max_sweep_members: int = Field(
        1024, description="Most members (grid points) one sweep may have."
    )
    reproductions_dir: Path | None = Field(
        None, description="Folder of the reproductions' YAML files (GET /api/v1/reproductions). "
        "Default: reproductions/ of the source checkout.",
    )
    max_points: int = Field(20_000, description="Largest max_points a metrics query may ask for.")
    max_response_points: int = Field(
        1_000_000,
        description="Most points one metrics response may hold: series (names x members) x "
        "max_points. Without max_points, the default shrinks to fit.",
    )

    # Quotas per owner (a token may override the first three: `groklab token create --max-...`)
    max_active_jobs_per_owner: int = Field(
        1100, ge=0,
        description="Queued + running experiments one owner may have (a sweep's members count "
        "one each); a submission over it is refused with 429 and Retry-After. Admin tokens are "
        "exempt unless given their own. 0: no limit.",
    )
    submissions_per_minute: int = Field(
        120, ge=0,
        description="Submissions (experiments or sweeps) one owner may make in 60 s, counted in "
        "the database across API processes; over it, 429 and Retry-After. Admin tokens are "
        "exempt unless given their own. 0: no limit.",
    )
    max_pending_analyses_per_owner: int = Field(
        16, ge=0,
        description="Checkpoint analyses and progress-measure computations one owner may have "
        "waiting for a worker (on the analysis queue); asking for one more is refused with 429 "
        "and Retry-After (asking again about a pending one is not). 0: no limit.",
    )
    max_compute_per_job: float = Field(
        1e16, ge=0,
        description="Most compute one experiment (or sweep member) may ask for: ensemble members "
        "x parameters x examples per step x steps. 0: no limit.",
    )
    max_checkpoints_per_job: int = Field(
        2000, ge=0, description="Most checkpoints one job may write: steps / checkpoint_every. 0: no limit."
    )
    max_evals_per_job: int = Field(
        200_000, ge=0, description="Most evaluations one job may run: steps / eval_every. 0: no limit."
    )
    max_analyses_per_job: int = Field(
        2000, ge=0,
        description="Most progress-measure analyses one job may run: steps / analysis.every. "
        "0: no limit.",
    )
    max_checkpoint_bytes: int = Field(
        4 * 2**30, ge=0,
        description="Largest checkpoint a spec may imply: members x parameters x 4 bytes x (1 + "
        "optimizer and gradient-filter state per parameter). 0: no limit.",
    )
    max_grad_filter_bytes: int = Field(
        16 * 2**30, ge=0,
        description="Most memory a Grokfast moving-average filter may hold: window x members x "
        "parameters x 4 bytes. 0: no limit.",
    )
    max_analysis_bytes: int = Field(
        8 * 2**30, ge=0,
        description="Most memory one progress-measure analysis may hold (its full-grid forward "
        "runs in chunks; see service/contract/budgets.py). 0: no limit.",
    )
    time_limit_floor_s: float = Field(
        3600.0, ge=0,
        description="Every job's time limit starts at this many seconds, plus "
        "time_limit_s_per_compute x its compute; past it the job fails with the reason.",
    )
    time_limit_s_per_compute: float = Field(
        2e-9, ge=0,
        description="Seconds of time limit per unit of compute (members x parameters x examples "
        "x steps). 0 with a floor of 0: no time limit.",
    )

    # Sweeps
    pack_memory_bytes: int = Field(
        40 * 2**30,
        description="GPU memory budget that sizes a sweep's default packs: as many members train "
        "together as fit in it (CPU packs: one per training process, see "
        "GROKLAB_WORKER_PROCESSES).",
    )

    # Alerts
    notify_allowed_hosts: str = Field(
        "",
        description="Comma-separated host or host:port list that alert webhooks (a spec's "
        "notify.url) may reach, checked at submit and again by the worker before each send; "
        "empty (the default) denies every host.",
    )

    # Checkpoint storage and analysis
    checkpoint_keep_last: int = Field(
        20, ge=0,
        description="Checkpoints kept per experiment: the latest this many, plus log-spaced "
        "milestones and those around the memorisation and generalisation steps (0: keep all).",
    )
    checkpoint_milestones: bool = Field(
        True, description="Also keep the first checkpoint at or after each power-of-two step."
    )
    storage_quota_bytes: int = Field(
        0, ge=0,
        description="Checkpoint bytes one owner may store; at or over it, new submissions are "
        "refused with 507 (running jobs carry on). 0: no quota.",
    )
    analysis_max_attempts: int = Field(
        3, ge=1,
        description="Tries of one checkpoint's on-demand analysis before its failure is final.",
    )
    llc_time_limit_s: float = Field(
        600.0, gt=0,
        description="Time bound of one checkpoint's LLC estimate (its SGLD chains); past it the "
        "estimate fails with that reason.",
    )

    # API
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, description="Port the API listens on.")
    api_workers: int = Field(
        1, ge=1, description="uvicorn worker processes of `groklab api` (compose runs 4; the "
        "embedded `groklab up` always runs one).",
    )
    token_cache_s: float = Field(
        5.0, ge=0,
        description="How long an API process reuses a checked bearer token. A revocation made "
        "in another process (the CLI, another API worker) takes effect within this time; 0: "
        "every request reads the token table.",
    )
    metrics_token: str | None = Field(
        None, description="When set, GET /metrics answers only `Authorization: Bearer <this>` "
        "(401 otherwise); unset, it is open like /healthz (counts and timings, no tenant data).",
    )
    events_poll_s: float = Field(
        1.0, gt=0,
        description="How often the API reads the status and new metrics of each experiment "
        "that has live-event watchers (one read per experiment, whatever the watchers).",
    )
    events_ping_s: float = Field(
        15.0, gt=0, description="Keep-alive comment interval of live-event streams; the "
        "stream's token is checked again at this interval (a revoked token's stream ends).",
    )
    events_max_streams: int = Field(
        2000, ge=1, description="Live-event streams one API process serves at once; past it, "
        "429 with Retry-After.",
    )
    events_max_streams_per_token: int = Field(
        20, ge=1, description="Live-event streams one token may hold open at once (per API "
        "process); past it, 429.",
    )
    events_max_lifetime_s: float = Field(
        3600.0, gt=0, description="A live-event stream ends after this long; the client "
        "reconnects with Last-Event-ID (its token checked again) and misses nothing.",
    )
    events_send_timeout_s: float = Field(
        30.0, gt=0, description="A live-event stream whose client takes longer than this to "
        "accept a write is closed.",
    )

    @field_validator("worker_processes", "torch_threads", "worker_gpus", "metrics_token", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        """An empty variable (compose's `${GROKLAB_WORKER_PROCESSES:-}`) means: work it out."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'groklab.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / ".groklab" / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
