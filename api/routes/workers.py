"""GET /workers: the live workers and the queues they serve (store/workers.py)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from store import workers

from ..deps import CurrentUser, SessionDep
from ..schemas import Message, Responses

router = APIRouter(prefix="/workers", tags=["workers"])
ERRORS: Responses = {401: {"model": Message}}


class WorkerPublic(BaseModel):
    name: str
    queue: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime


class WorkersPublic(BaseModel):
    items: list[WorkerPublic]
    served: list[str] = Field(description="queues at least one live worker serves")
    unserved: list[str] = Field(description="known queues no live worker serves: runs routed there wait")


@router.get("", responses=ERRORS)
def list_workers(session: SessionDep, _user: CurrentUser) -> WorkersPublic:
    """Workers that beat within the last 45 s, and which queues are served."""
    alive = workers.live(session=session)
    served = sorted({w.queue for w in alive})
    items = [
        WorkerPublic(name=w.name, queue=w.queue, host=w.host, pid=w.pid, started_at=w.started_at, last_seen=w.last_seen)
        for w in alive
    ]
    return WorkersPublic(items=items, served=served, unserved=[q for q in workers.QUEUES if q not in served])
