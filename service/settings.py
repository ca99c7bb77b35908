"""One settings object for the whole service, read from GROKLAB_* environment variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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
    worker_queues: str = Field("gpu,cpu", description="Comma-separated queues a worker consumes.")
    default_queue: str = Field("cpu", description="Queue for experiments whose device is not 'cuda'.")
    visibility_timeout_s: int = Field(
        48 * 3600, description="Redis visibility timeout: longer than the longest job."
    )
    metrics_flush_s: float = Field(1.0, description="Recorder flushes metrics at least this often.")
    heartbeat_s: float = Field(5.0, description="Running jobs update their heartbeat this often.")
    heartbeat_timeout_s: float = Field(
        60.0, description="A running job whose heartbeat is older than this is requeued."
    )
    reaper_interval_s: float = Field(
        10.0, description="How often the API process runs the reaper and the reconciler (0: never)."
    )
    reconcile_after_s: float = Field(
        30.0, description="A job queued this long with no broker message is enqueued again."
    )

    # Abuse limits
    max_body_bytes: int = Field(256 * 1024, description="Largest accepted request body.")
    max_p: int = Field(1009, description="Largest modulus p a spec may ask for.")
    max_steps: int = Field(1_000_000, description="Most training steps a spec may ask for.")
    max_params: int = Field(50_000_000, description="Most model parameters per ensemble member.")
    max_ensemble: int = Field(256, description="Largest ensemble a spec may ask for.")
    max_page_size: int = Field(500, description="Largest page of experiments in a list.")
    max_sweep_members: int = Field(
        1024, description="Most members (grid points) one sweep may have."
    )
    max_points: int = Field(20_000, description="Largest max_points a metrics query may ask for.")
    max_response_points: int = Field(
        1_000_000,
        description="Most points one metrics response may hold: series (names x members) x "
        "max_points. Without max_points, the default shrinks to fit.",
    )

    # Sweeps
    pack_memory_bytes: int = Field(
        40 * 2**30,
        description="GPU memory budget that sizes a sweep's default packs: as many members train "
        "together as fit in it (CPU packs hold 8).",
    )

    # Alerts
    notify_allowed_hosts: str = Field(
        "",
        description="Comma-separated host or host:port list that alert webhooks (a spec's "
        "notify.url) may reach, checked at submit and again by the worker before each send; "
        "empty (the default) denies every host.",
    )

    # API
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, description="Port the API listens on.")

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
