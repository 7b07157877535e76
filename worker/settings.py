"""Worker settings, from environment variables (EOS_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eos_core.slices import DEFAULT_SLICE_MEMORY_GIB, DEFAULT_SLICE_RUNS


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EOS_", extra="ignore")

    database_url: str | None = Field(None, description="SQLAlchemy URL; unset means the embedded SQLite file")
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    broker_prefix: str = Field(
        "", description="prefix of every broker key (queues, unacked messages): several deployments share one Redis"
    )
    visibility_timeout: int = Field(
        7 * 24 * 3600, description="seconds before Redis redelivers an unacknowledged task: longer than any run"
    )
    heartbeat_seconds: float = Field(
        5.0, description="at most this long between heartbeats of a running run (a thread beats, whatever the step)"
    )
    stale_seconds: float = Field(
        30.0, description="a running run whose heartbeat is older is presumed dead: its worker was lost"
    )
    queue_check_seconds: float = Field(
        30.0, description="a queued run sent longer ago than this is looked for on the broker (and resent if lost)"
    )
    max_attempts: int = Field(3, description="attempts per run before the reaper marks it failed")
    reap_every: float = Field(
        15.0,
        description="seconds between reaper passes (Celery beat or eos reaper): a dead worker is seen within"
        " stale_seconds + reap_every",
    )
    database_wait: float = Field(
        300.0, description="seconds a worker waits out an unreachable database (retrying) before giving the run up"
    )
    presence_seconds: float = Field(
        10.0, description="seconds between a worker's presence beats (store/workers.py: which queues are served)"
    )
    flush_rows: int = Field(4096, description="trace rows buffered per run before a write")
    slice_runs: int = Field(
        DEFAULT_SLICE_RUNS,
        ge=1,
        description="runs a worker trains as one slice at most: a run's task takes along the queued runs of its"
        " experiment and queue that share its slice key (eos_core.slices); 1 trains every run alone",
    )
    slice_memory_gib: float = Field(
        DEFAULT_SLICE_MEMORY_GIB,
        gt=0,
        description="a slice's memory at most, GiB, by the runs' estimates (eos_core.resources); a run alone is"
        " always a slice",
    )
