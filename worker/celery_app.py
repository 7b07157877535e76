"""The Celery application and its settings for long GPU work.

- late acknowledgement and reject-on-worker-lost: a run whose worker dies is redelivered;
- prefetch of one: a worker holds no run it is not training;
- a visibility timeout longer than the longest run, so Redis does not redeliver a live run;
- workers are started with the solo pool (see `eos worker`): nothing forks after CUDA is
  initialised. Scale by starting more worker processes, one per GPU.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from .settings import WorkerSettings

RUN_TASK = "eos.run"
REAP_TASK = "eos.reap"


@cache
def make_app(broker_url: str | None = None) -> Celery:
    settings = WorkerSettings()
    app = Celery("eos", broker=broker_url or settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "global_keyprefix": settings.broker_prefix,
            "socket_connect_timeout": 5,  # a send to an unreachable Redis fails fast instead of hanging
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        beat_schedule={"reap": {"task": REAP_TASK, "schedule": settings.reap_every}},
    )
    return app


app = make_app()
