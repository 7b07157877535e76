"""Which runs train together: sweep slices (eos_core.slices) over the runs in the store.

A slice holds runs of one experiment that share a slice key (they differ only in name, seed
and step size), at most `max_runs` of them and at most `max_memory_gib` by the runs' memory
estimates. The Celery task of a run takes along the queued runs of its experiment and queue
that fit its slice (slice_mates); the in-process executor plans the runs submitted together
(plan_runs). Either way the claim (store.lifecycle.claim) decides: a run is trained by the
one attempt that claimed it, whichever slice that attempt belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from eos_core.slices import plan_slices, slice_key
from eos_core.spec import RunSpec
from store import lifecycle
from store.models import Run

# Queued runs looked at per slice, as a multiple of the slice's size: enough for a sweep whose
# grid interleaves slice keys (batch sizes × step sizes), and bounded for one of thousands.
CANDIDATES_PER_RUN = 16


def _spec(data: dict[str, object]) -> RunSpec | None:
    try:
        return RunSpec.model_validate(data)
    except ValueError:  # a spec that no longer validates trains alone, and fails with the reason
        return None


def slice_mates(sessions: sessionmaker[Session], run_id: int, max_runs: int, max_memory_gib: float) -> list[int]:
    """Ids of the queued runs that can share run `run_id`'s slice, oldest first (run `run_id` not
    among them): same experiment, same queue, same slice key, within the slice's bounds."""
    if max_runs <= 1:
        return []
    with sessions() as session:  # a read: the claims that follow are what holds each run
        run = session.get(Run, run_id)
        lead = None if run is None else _spec(run.spec)
        if run is None or lead is None:
            return []
        key = slice_key(lead)
        candidates = lifecycle.queued_mates(session=session, run=run, limit=CANDIDATES_PER_RUN * max_runs)
        mates = [(mate.id, spec) for mate in candidates if (spec := _spec(mate.spec)) and slice_key(spec) == key]
    first = plan_slices([lead, *(spec for _, spec in mates)], max_runs, max_memory_gib)[0]
    assert first[0] == 0  # the run itself opens its slice
    return [mates[i - 1][0] for i in first[1:]]


def plan_runs(
    sessions: sessionmaker[Session], run_ids: Sequence[int], max_runs: int, max_memory_gib: float
) -> list[list[int]]:
    """Runs `run_ids` grouped into slices (eos_core.slices.plan_slices), in order of first appearance.
    A run that is gone is left out; one whose spec does not validate is a slice of its own."""
    ids = list(dict.fromkeys(run_ids))
    with sessions() as session:
        stored = {run_id: spec for run_id, spec in session.execute(select(Run.id, Run.spec).where(Run.id.in_(ids)))}
    valid: list[tuple[int, RunSpec]] = []
    alone: list[list[int]] = []
    for run_id in ids:
        if run_id not in stored:
            continue
        spec = _spec(stored[run_id])
        if spec is None:
            alone.append([run_id])
        else:
            valid.append((run_id, spec))
    groups = plan_slices([spec for _, spec in valid], max(1, max_runs), max_memory_gib) if valid else []
    return [[valid[i][0] for i in group] for group in groups] + alone
