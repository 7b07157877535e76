"""The dashboard in a real browser, against a real server with real data.

Once per session: a dedicated PostgreSQL database, upgraded; a user and token; an experiment
sweeping optimizer.lr × optimizer.batch_size (4 cells) whose runs are trained by eos_core through
worker.runner.execute_run, one of them stopped half-way and left 'running' with its partial trace
(as a live run looks); the API served by uvicorn in a subprocess (`python -m api`); and headless
Chromium (Debian's `chromium`) driven by Playwright. The browser tests skip, saying why, when
Playwright or Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from eos_core import StopTraining
from eos_core.trace import METRICS
from store import lifecycle, queries
from store.db import session_factory
from store.models import User
from store.traces import append_trace
from tests.postgres import database_url, fresh_engine, session_name
from worker.runner import DERIVED_EVENTS, execute_run

DATABASE = session_name("eos_test_dashboard")
URL = database_url(DATABASE)
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "out" / "screenshots"  # docs/screenshots holds copies refreshed by hand
CHROMIUM = os.environ.get("EOS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

LRS = [10.0, 100.0]
BATCHES = [4, 16]
STEPS = 200
PARTIAL_AT = 110  # the 'running' run is stopped after about this many steps
LONG_ROWS, LONG_SPIKE_AT, LONG_SPIKE, LONG_LR = 30_000, 17_777, 50.0, 10.0
FAIL_AT, FAILURE = 50, "the accelerator fell off the bus (simulated)"

# Tiny but real: the paper's Fig. 4 setting (linear model, separable-ish Gaussian mixture), with
# the instrumentation thinned so that each run trains in a second or two.
SPEC: dict[str, Any] = {
    "name": "dash-fig4",
    "seed": 2,
    "device": "cpu",
    "dataset": {"kind": "gaussian_mixture", "classes": 4, "per_class": 20, "dim": 10, "separation": 1.0},
    "model": {"kind": "linear"},
    "optimizer": {"lr": 10.0, "batch_size": 4, "steps": STEPS},
    "instrument": {
        "drift_samples": 8,
        "drift_max_samples": 16,
        "drift_every": 4,
        "sharpness_every": 20,
        "batch_sharpness_samples": 4,
        "test_every": 20,
        "chunk_rows": 16,
    },
}


@dataclass
class Data:
    """What the fixture made: ids, the token, and the stopped run's real (partial) summary."""

    token: str
    experiment_id: int
    run_ids: list[int]  # in creation order
    params: dict[int, dict[str, Any]]
    running_id: int
    running_summary: dict[str, Any] = field(default_factory=dict)
    long_id: int = 0  # a run with a long synthetic trace, to be drawn downsampled
    failed_experiment_id: int = 0  # two runs: the first fails half-way (FAILURE at FAIL_AT), the second completes
    failed_id: int = 0


def long_trace(rows: int, spike_at: int, spike: float) -> dict[str, np.ndarray]:
    """A 1/t-like loss with noise and one spike (a single step), drift and stability every 4th step."""
    rng = np.random.default_rng(0)
    step = np.arange(rows, dtype=np.int64)
    trace = {"step": step, **{name: np.full(rows, np.nan) for name in METRICS}}
    loss = 2.0 / (1.0 + 0.05 * step) * np.exp(0.3 * rng.standard_normal(rows))
    loss[spike_at] = spike
    trace["loss"], trace["eta_loss"] = loss, LONG_LR * loss
    measured = step % 4 == 0
    drift = np.where(measured, -1e-3 * loss + 2e-3 * loss * rng.standard_normal(rows), np.nan)
    trace["drift"], trace["drift_se"] = drift, np.where(measured, 5e-4 * loss, np.nan)
    trace["stable"] = np.where(measured, (drift <= 0).astype(float), np.nan)
    trace["sharpness"] = np.where(step % 100 == 0, 0.5 * loss, np.nan)
    return trace


def add_long_run(session: Session, user: User) -> int:
    spec = {**SPEC, "name": "long-synthetic", "optimizer": {**SPEC["optimizer"], "lr": LONG_LR, "steps": LONG_ROWS - 1}}
    experiment = queries.create_experiment(session=session, owner=user, spec=spec, name="long synthetic trace")
    (run,) = queries.list_runs(session=session, experiment_id=experiment.id)
    append_trace(session=session, run_id=run.id, chunk=long_trace(LONG_ROWS, LONG_SPIKE_AT, LONG_SPIKE))
    run.step, run.progress, run.status = LONG_ROWS - 1, 1.0, "running"  # as if a worker had trained it
    summary = {"lr_effective": LONG_LR, "recorded_steps": LONG_ROWS}
    lifecycle.finish(session=session, run=run, status=lifecycle.RunStatus.COMPLETED, summary=summary)
    return run.id


def train_partially(run_id: int, sessions: sessionmaker[Session]) -> None:
    """Train until PARTIAL_AT steps, then stop as a cancellation would (the trace so far is kept)."""

    def progress(step: int, _steps: int) -> None:
        if step >= PARTIAL_AT:
            raise StopTraining

    status = execute_run(run_id, sessions, worker="dashboard-test", flush_rows=16, progress=progress)
    assert status == "cancelled", status


def train_then_fail(run_id: int, sessions: sessionmaker[Session]) -> None:
    """Train until FAIL_AT steps, then raise as a crashing step would: the worker records the failure."""

    def progress(step: int, _steps: int) -> None:
        if step >= FAIL_AT:
            raise RuntimeError(FAILURE)

    status = execute_run(run_id, sessions, worker="dashboard-test", flush_rows=16, progress=progress)
    assert status == "failed", status


def add_failed_experiment(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """(experiment id, failed run id): a sweep of two step sizes whose first run fails half-way."""
    with sessions.begin() as session:
        user = queries.get_user(session=session, name="dana")
        experiment = queries.create_experiment(
            session=session, owner=user, spec=SPEC, sweep={"optimizer.lr": LRS}, name="one run fails"
        )
        failed_id, other_id = (r.id for r in queries.list_runs(session=session, experiment_id=experiment.id))
        experiment_id = experiment.id
    train_then_fail(failed_id, sessions)
    assert execute_run(other_id, sessions, worker="dashboard-test") == "completed"
    return experiment_id, failed_id


def mark_running(run_id: int, sessions: sessionmaker[Session]) -> None:
    """A live run as the worker leaves it mid-way: running, with a trace and no summary yet."""
    with sessions.begin() as session:
        run = queries.get_run(session=session, run_id=run_id)
        run.status, run.cancel_requested, run.summary, run.finished_at = "running", False, None, None
        run.heartbeat_at = queries.now()
        queries.delete_events(session=session, run_id=run_id, kinds=(*DERIVED_EVENTS, "cancel"))


def mark_completed(run_id: int, summary: dict[str, Any], sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        run = queries.get_run(session=session, run_id=run_id)
        run.status = "running"
        lifecycle.finish(session=session, run=run, status=lifecycle.RunStatus.COMPLETED, summary=summary)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    engine = fresh_engine(DATABASE)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture(scope="session")
def data(sessions: sessionmaker[Session]) -> Data:
    with sessions.begin() as session:
        user, token = queries.create_user(session=session, name="dana")
        experiment = queries.create_experiment(
            session=session,
            owner=user,
            spec=SPEC,
            sweep={"optimizer.lr": LRS, "optimizer.batch_size": BATCHES},
            name="fig4 lr x batch",
            tags=["dashboard", "linear"],
        )
        runs = queries.list_runs(session=session, experiment_id=experiment.id)
        run_ids = [r.id for r in runs]
        params = {r.id: dict(r.params) for r in runs}
        experiment_id = experiment.id
    running_id = run_ids[-1]
    for run_id in run_ids[:-1]:
        assert execute_run(run_id, sessions, worker="dashboard-test") == "completed"
    train_partially(running_id, sessions)
    with sessions() as session:
        summary = dict(queries.get_run(session=session, run_id=running_id).summary or {})
    mark_running(running_id, sessions)
    with sessions.begin() as session:
        long_id = add_long_run(session, queries.get_user(session=session, name="dana"))
    failed_experiment_id, failed_id = add_failed_experiment(sessions)
    return Data(token, experiment_id, run_ids, params, running_id, summary, long_id, failed_experiment_id, failed_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def server(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m api` on a free port against the test database; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "uvicorn.log"
    env = {**os.environ, "EOS_DATABASE_URL": URL, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the API server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the API server did not answer within 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def api(server: str, data: Data) -> Iterator[httpx.Client]:
    """An authenticated client of the same server, for the numbers the pages must show."""
    with httpx.Client(base_url=f"{server}/api/v1", headers={"Authorization": f"Bearer {data.token}"}) as client:
        yield client


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright; never `playwright install`)"
    )
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set EOS_CHROMIUM to its path)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def shrink(png: Path) -> None:
    """Palette PNG (about a third of the size) when Pillow is there. The palette is the page's 256 most
    frequent colours, so flat fills (backgrounds, status colours, plot lines) stay exact; only anti-aliased
    edges move to a near colour. (Pillow's own quantizers merge the light greys of the layout.)"""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    counts = rgb.getcolors(maxcolors=1 << 24) or []
    top = [value for _, colour in sorted(counts, reverse=True)[:256] for value in colour]
    palette = Image.new("P", (1, 1))
    palette.putpalette(top + [0] * (768 - len(top)))
    rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(png, optimize=True)


@dataclass
class Page:
    """A browser page with everything that went wrong on it: console errors, page errors, failed requests."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> Any:
        self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        return self.page

    def screenshot(self, name: str) -> Path:
        """The whole page as out/screenshots/NAME.png (or under $EOS_SCREENSHOTS), 256 colours when Pillow is there."""
        folder = Path(os.environ.get("EOS_SCREENSHOTS") or SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=True)
        shrink(target)
        return target

    def assert_clean(self) -> None:
        assert not self.errors, "the browser reported errors:\n" + "\n".join(self.errors)


def new_page(browser: Any, server: str, token: str | None) -> tuple[Any, Page]:
    """A fresh browser context (holding `token` in localStorage, as the login box leaves it) and a page in it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    if token is not None:
        context.add_init_script(f"window.localStorage.setItem('eos.token', {token!r});")
    tab = context.new_page()
    result = Page(tab, server)
    tab.on("console", lambda m: result.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: result.errors.append(f"page error: {e}"))
    tab.on("requestfailed", lambda r: result.errors.append(f"request failed: {r.url} {r.failure}"))
    tab.on("response", lambda r: result.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    return context, result


@pytest.fixture
def page(browser: Any, server: str, data: Data) -> Iterator[Page]:
    context, result = new_page(browser, server, data.token)
    yield result
    context.close()


@pytest.fixture
def bare_page(browser: Any, server: str) -> Iterator[Page]:
    """No token stored: what a first visit looks like."""
    context, result = new_page(browser, server, None)
    yield result
    context.close()
