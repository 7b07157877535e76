"""`Client`: one class for an eos server and for the embedded store, over one HTTP code path.

    from eos_client import Client

    client = Client("http://eos:8000", token)        # a server (defaults: EOS_URL, EOS_TOKEN)
    client = Client.local()                          # the embedded SQLite store (also Client() without EOS_URL)
    experiment = client.submit("examples/fig4_linear.yaml", sweep={"optimizer.lr": [1, 10, 100]})
    client.wait(experiment)                          # progress bars; locally the runs train in this process
    client.runs(experiment)                          # DataFrame: one row per run, params and summary columns
    client.trace(experiment, ["loss", "drift"], max_points=2000)   # long DataFrame: run, step, metrics

Errors are `eos_client.errors.EosError` subclasses: ValidationFailed (422, names the field), NotFound,
Conflict, AuthError, ServerUnreachable (names the URL), ServerError.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import pandas as pd
import yaml
from rich.console import Console

from .errors import Conflict, InputError, error_for, unreachable
from .frames import (
    SUMMARY_FIELDS,
    compare_frame,
    concat,
    events_frame,
    experiments_frame,
    kappa_frame,
    runs_frame,
    scalar_fields,
    series_frame,
    trace_json_frame,
    trace_parquet_frame,
)
from .local import BASE_URL, LocalStore
from .models import Comparison, Experiment, Run
from .progress import follow

API = "/api/v1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_PAUSE = 1.0  # seconds between tries when the server gives no Retry-After
TRANSPORT_RESENDS = 3  # times a keyed submission is sent again after a connection failure
SpecLike = Mapping[str, Any] | str | Path | Any  # a dict, a YAML/JSON file, or an eos_core RunSpec
SweepLike = Mapping[str, Sequence[Any]] | Sequence[str] | None  # {"optimizer.lr": [1, 10]} or ["optimizer.lr=1,10"]
RunRef = int | Run
RunsRef = int | Run | Experiment | Iterable[int | Run]
Metrics = str | Sequence[str] | None  # "loss,drift", ["loss", "drift"], or None for every metric
Fields = Sequence[str] | Literal["all"]


def server_url(url: str) -> str:
    """'http://host:8000/' or 'http://host:8000/api/v1' -> 'http://host:8000'."""
    url = url.strip().rstrip("/")
    url = url.removesuffix(API)
    if not url.startswith(("http://", "https://")):
        raise InputError(f"server URL {url!r} must start with http:// or https:// (e.g. http://host:8000)")
    return url


def load_spec(spec: SpecLike) -> dict[str, Any]:
    """A spec as a JSON-able dict, from a dict, a RunSpec (anything with model_dump) or a YAML/JSON file."""
    if isinstance(spec, Mapping):
        return dict(spec)
    if hasattr(spec, "model_dump"):
        dumped: dict[str, Any] = spec.model_dump(mode="json")
        return dumped
    if not isinstance(spec, str | Path):
        raise InputError(f"a spec is a dict, a RunSpec or a file path, not {type(spec).__name__}")
    path = Path(spec).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read spec file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"spec file {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"spec file {path} must hold a mapping of spec fields")
    return data


def parse_sweep(sweep: SweepLike) -> dict[str, list[Any]] | None:
    """{"optimizer.lr": [0.1, 1]} as is; ["optimizer.lr=0.1,1"] parsed (values as YAML scalars), or
    ["optimizer=[{lr: 1, steps: 9}, {lr: 10}]"] (a YAML list, for values that hold commas)."""
    if sweep is None or isinstance(sweep, Mapping):
        return None if not sweep else {str(k): list(v) for k, v in sweep.items()}
    parsed: dict[str, list[Any]] = {}
    for item in sweep:
        path, sep, values = str(item).partition("=")
        if not sep or not path.strip() or not values.strip():
            raise InputError(f"sweep {item!r}: expected PATH=V1,V2,... such as optimizer.lr=1,10,100")
        parsed[path.strip()] = _sweep_values(str(item), values.strip())
    return parsed or None


def _sweep_values(item: str, values: str) -> list[Any]:
    if not values.startswith("["):
        return [yaml.safe_load(v) for v in values.split(",")]
    try:
        found = yaml.safe_load(values)
    except yaml.YAMLError as exc:
        raise InputError(f"sweep {item!r}: the values are not a valid YAML list: {exc}") from exc
    if not isinstance(found, list) or not found:
        raise InputError(f"sweep {item!r}: expected a non-empty YAML list such as [{{lr: 1}}, {{lr: 10}}]")
    return found


def metric_names(metrics: Metrics) -> list[str] | None:
    if metrics is None:
        return None
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    return [n.strip() for n in names if n.strip()]


class Client:
    """The eos API from Python. Use as a context manager (or call `close()`), above all in local mode."""

    _http: httpx.Client
    _local: LocalStore | None
    url: str

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        """A server at `url` (default EOS_URL) with `token` (default EOS_TOKEN); without any URL, the embedded
        store (see `Client.local`)."""
        url = url or os.environ.get("EOS_URL") or None
        if url is None:
            self._open_local(None)
            return
        self.url = server_url(url)
        self._local = None
        token = token or os.environ.get("EOS_TOKEN") or ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + API, headers=headers, timeout=timeout)
        self._submitted: dict[int, list[int]] = {}
        self.poll = 2.0
        self.retry_seconds = 60.0  # how long a 503 or an unreachable server is retried

    @classmethod
    def local(cls, db: str | Path | None = None, *, create: bool = True) -> Client:
        """The embedded store: an SQLite file (default EOS_DATABASE_URL or ~/.eos/eos.sqlite), upgraded on open.

        Submitted runs train in this process, one at a time, in a background thread; `close()` cancels the
        ones not finished. Waiting on queued runs of the store (left by another process) trains them here.
        create=False refuses a file that does not exist (InputError) instead of creating an empty store.
        """
        client = cls.__new__(cls)
        client._open_local(db, create=create)
        return client

    def _open_local(self, db: str | Path | None, *, create: bool = True) -> None:
        self._local = LocalStore.open(db, create=create)
        self.url = self._local.url
        headers = {"Authorization": f"Bearer {self._local.token}"}
        self._http = httpx.Client(transport=self._local.transport, base_url=BASE_URL + API, headers=headers)
        self._submitted = {}
        self.poll = 0.25
        self.retry_seconds = 60.0
        atexit.register(self.close)

    @property
    def is_local(self) -> bool:
        return self._local is not None

    def __repr__(self) -> str:
        return f"Client.local({self.url!r})" if self.is_local else f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection; locally, cancel the runs not finished and stop the training thread."""
        local, self._local = self._local, None
        if local is not None:
            atexit.unregister(self.close)
            self._cancel_quietly(local.runner.pending)
            self._http.close()
            local.close()
        else:
            self._http.close()

    def _cancel_quietly(self, run_ids: Iterable[int]) -> None:
        for run_id in run_ids:
            with contextlib.suppress(Conflict):  # it finished meanwhile
                self.cancel(run_id)

    # --- HTTP ---------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request. A busy or briefly unavailable server (503 with Retry-After) is asked again
        for up to `retry_seconds`; a submission carrying an Idempotency-Key whose connection failed
        is sent again a few times (the key makes that safe: it cannot create the experiment twice)."""
        waited = 0.0
        resends = TRANSPORT_RESENDS if IDEMPOTENCY_HEADER in (kwargs.get("headers") or {}) else 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if resends <= 0:
                    raise unreachable(exc, self.url) from exc
                resends -= 1
                time.sleep(RETRY_PAUSE)
                continue
            pause = _retry_after(response)
            if pause is None or waited + pause > self.retry_seconds:
                break
            time.sleep(pause)
            waited += pause
        if response.is_error:
            raise error_for(response)
        return response

    def _get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", path, params=clean).json()

    # --- experiments and runs -----------------------------------------------------------------------

    def submit(
        self, spec: SpecLike, sweep: SweepLike = None, *, name: str | None = None, tags: Sequence[str] = ()
    ) -> Experiment:
        """Create an experiment: one run, or one per cell of `sweep` (dotted spec path -> values).

        `spec` is a dict, a RunSpec, or a YAML/JSON file; `sweep` is a dict or strings like
        "optimizer.lr=0.1,1,10". A bad spec raises ValidationFailed naming the field."""
        body = {"spec": load_spec(spec), "sweep": parse_sweep(sweep), "name": name, "tags": list(tags)}
        # One key per submission: a retried POST (a 503, a dropped connection) cannot create it twice.
        headers = {IDEMPOTENCY_HEADER: str(uuid.uuid4())}
        experiment = Experiment.from_json(self._request("POST", "/experiments", json=body, headers=headers).json())
        self._submitted[experiment.id] = experiment.run_ids
        return experiment

    def experiment(self, experiment: int | Experiment) -> Experiment:
        """One experiment with its runs."""
        return Experiment.from_json(self._get(f"/experiments/{_experiment_id(experiment)}"))

    def experiments(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> pd.DataFrame:
        """Experiments, newest first: experiment, name, owner, tags, swept, created_at. `status` keeps those
        with a run in that status."""
        body = self._get("/experiments", owner=owner, status=status, tag=tag, name=name, limit=limit)
        return experiments_frame(body["items"])

    def run(self, run: RunRef) -> Run:
        """One run: status, progress, summary, error."""
        return Run.from_json(self._get(f"/runs/{_run_id(run)}"))

    def list_runs(self, experiment: int | Experiment, status: str | Sequence[str] | None = None) -> list[Run]:
        """The runs of an experiment as Run objects, in creation order."""
        statuses = [status] if isinstance(status, str) else status
        body = self._get("/runs", experiment_id=_experiment_id(experiment), status=statuses)
        return [Run.from_json(item) for item in body["items"]]

    def runs(
        self,
        experiment: int | Experiment,
        *,
        status: str | Sequence[str] | None = None,
        fields: Fields = SUMMARY_FIELDS,
    ) -> pd.DataFrame:
        """One row per run: run, experiment, name, status, progress, step, steps, the swept params (one
        column per dotted path, e.g. `optimizer.lr`), the summary `fields` ("all": every scalar one), error."""
        runs = self.list_runs(experiment, status)
        chosen = scalar_fields(r.summary for r in runs) if fields == "all" else list(fields)
        return runs_frame(runs, chosen)

    def kappa(self, experiment: int | Experiment) -> pd.DataFrame:
        """κ_B per batch size, pooled over the experiment's analysed runs: batch_size, runs, kappa_B,
        kappa_B_bound (upper/lower), kappa_low, kappa_high (95% order-statistic interval), rows_outside,
        rows_in_S. See eos_core/kappa.py for the exact definition."""
        return kappa_frame(self._get(f"/experiments/{_experiment_id(experiment)}/kappa"))

    def cancel(self, run: RunRef) -> Run:
        """Cancel a run: a queued one at once, a running one at its next trace flush. Conflict if finished."""
        return Run.from_json(self._request("POST", f"/runs/{_run_id(run)}/cancel").json())

    def workers(self) -> dict[str, Any]:
        """The live workers (name, queue, host, pid, last_seen) and which queues are served or not."""
        return dict(self._get("/workers"))

    def events(self, run: RunRef) -> pd.DataFrame:
        """The run's events in order: run, id, kind (attempt, cancel, entrance, exit, return, divergence), step,
        details, created_at."""
        return events_frame(self._get(f"/runs/{_run_id(run)}/events")["items"])

    # --- waiting ------------------------------------------------------------------------------------

    def wait(
        self,
        experiment: int | Experiment | None = None,
        *,
        runs: Iterable[RunRef] | None = None,
        progress: bool = True,
        poll: float | None = None,
        timeout: float | None = None,
    ) -> pd.DataFrame:
        """Block until the runs finish, with a progress bar per run; returns their `runs()` frame.

        Which runs: those of `experiment`, or `runs`, or (neither given) every run this client submitted.
        Raises WaitTimeout after `timeout` seconds. Finished is any of completed, diverged, failed, cancelled:
        check the `status` column."""
        groups = self._wait_groups(experiment, runs)
        final = follow(lambda: self._poll_runs(groups), show=progress, poll=poll or self.poll, timeout=timeout)
        return runs_frame(final)

    def _wait_groups(self, experiment: int | Experiment | None, runs: Iterable[RunRef] | None) -> dict[int, set[int]]:
        """experiment id -> the run ids to wait for in it (None: all its runs)."""
        if experiment is not None:
            return {_experiment_id(experiment): set()}
        if runs is None:
            return {e: set(ids) for e, ids in self._submitted.items()}
        groups: dict[int, set[int]] = {}
        for ref in runs:
            found = ref if isinstance(ref, Run) else self.run(ref)
            groups.setdefault(found.experiment_id, set()).add(found.id)
        return groups

    def _poll_runs(self, groups: Mapping[int, set[int]]) -> list[Run]:
        found = [r for e, ids in groups.items() for r in self.list_runs(e) if not ids or r.id in ids]
        if self._local is not None:  # queued runs of the embedded store only train if someone runs them
            self._local.runner(r.id for r in found if r.status == "queued")
        return found

    def watch(
        self,
        runs: Sequence[RunRef],
        *,
        progress: bool = True,
        poll: float | None = None,
        console: Console | None = None,
    ) -> list[Run]:
        """Follow these runs until they finish (as `wait`, bars on `console`), returning Run objects."""
        groups = self._wait_groups(None, runs)
        return follow(lambda: self._poll_runs(groups), show=progress, poll=poll or self.poll, console=console)

    # --- traces -------------------------------------------------------------------------------------

    def trace(self, runs: RunsRef, metrics: Metrics = None, max_points: int | None = None) -> pd.DataFrame:
        """A long frame: run, step, one column per metric (all when `metrics` is None).

        max_points=None: every recorded step, exactly as trained (NaN where a metric was not measured).
        Otherwise each run is cut into at most max_points step buckets: `step` is a bucket's first step,
        `<metric>` the NaN-aware mean over it, `<metric>_min` / `<metric>_max` its extremes (spikes survive)."""
        names = metric_names(metrics)
        frames = [self._trace_one(run_id, names, max_points) for run_id in self._run_ids(runs)]
        return concat(frames, ["run", "step", *(names or [])])

    def _trace_one(self, run_id: int, names: list[str] | None, max_points: int | None) -> pd.DataFrame:
        joined = ",".join(names) if names is not None else None
        if max_points is None:
            params = {k: v for k, v in {"format": "parquet", "metrics": joined}.items() if v is not None}
            response = self._request("GET", f"/runs/{run_id}/trace", params=params)
            return trace_parquet_frame(run_id, response.content)
        return trace_json_frame(self._get(f"/runs/{run_id}/trace", metrics=joined, max_points=max_points))

    def export_trace(self, run: RunRef, path: str | Path, metrics: Metrics = None) -> Path:
        """Write the full-resolution trace to `path` (.csv or .parquet, by its suffix), streamed."""
        path = Path(path)
        kind = path.suffix.lower().lstrip(".")
        if kind not in ("csv", "parquet"):
            raise InputError(f"{path}: the trace is exported as .csv or .parquet")
        names = metric_names(metrics)
        params = {"format": kind, **({"metrics": ",".join(names)} if names is not None else {})}
        try:
            with path.open("wb") as sink:
                for piece in self._stream(f"/runs/{_run_id(run)}/trace", params):
                    sink.write(piece)
        except BaseException:
            path.unlink(missing_ok=True)  # no half-written file on an error
            raise
        return path

    def _stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.is_error:
                    response.read()
                    raise error_for(response)
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise unreachable(exc, self.url) from exc

    def compare(self, runs: RunsRef, metrics: Metrics = "loss", max_points: int = 500) -> Comparison:
        """Runs side by side: `.runs` (params, status, summary fields; one row per run) and `.series` (run,
        step, metrics on one step grid shared by every run, at most max_points steps)."""
        ids = ",".join(map(str, self._run_ids(runs)))
        joined = ",".join(metric_names(metrics) or ["loss"])
        body = self._get("/compare", runs=ids, metrics=joined, max_points=max_points)
        return Comparison(runs=compare_frame(body["runs"]), series=series_frame(body))

    def plot(self, runs: RunsRef, path: str | Path | None = None, max_points: int = 2000) -> Any:
        """Loss (log-log), drift and sharpness of the runs, labelled by their swept params; a matplotlib
        Figure, also saved to `path` when given."""
        from .plot import TRACE_METRICS, plot_runs

        found = [self.run(i) for i in self._run_ids(runs)]
        trace = self.trace(found, list(TRACE_METRICS), max_points=max_points)
        return plot_runs(found, trace, path)

    def _run_ids(self, runs: RunsRef) -> list[int]:
        if isinstance(runs, Experiment):
            return runs.run_ids if runs.runs is not None else self.experiment(runs).run_ids
        if isinstance(runs, int | Run):
            return [_run_id(runs)]
        return [_run_id(r) for r in runs]


def _run_id(run: RunRef) -> int:
    return run.id if isinstance(run, Run) else int(run)


def _experiment_id(experiment: int | Experiment) -> int:
    return experiment.id if isinstance(experiment, Experiment) else int(experiment)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before asking again: a 503's Retry-After (seconds), else None (do not retry)."""
    if response.status_code != 503:
        return None
    try:
        return max(0.0, float(response.headers.get("Retry-After", RETRY_PAUSE)))
    except ValueError:
        return RETRY_PAUSE
