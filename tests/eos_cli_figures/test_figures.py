"""`eos figures paper`: plans and titles, PNGs written, runs reused from the store, MNIST from EOS_DATA_DIR."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from eos_cli import figures
from eos_cli.figures import (
    FIGURES,
    FigureRuns,
    RunData,
    binned_median,
    make_figures,
    plan_figures,
    tail_guide,
)
from eos_cli.main import app
from eos_core.data.files import CIFAR_FOLDER, CIFAR_TEST, CIFAR_TRAIN, DATA_DIR_VARIABLE, IDX_FILES
from eos_core.spec import RunSpec
from eos_core.summary import RunSummary
from store.db import make_engine, session_factory, upgrade
from store.models import Experiment, Run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


@pytest.fixture(autouse=True)
def no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)


def _invoke(*args: str) -> Any:
    return runner.invoke(app, ["figures", "paper", *args])


def _text(result: Any) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _sessions(db: Path) -> Any:
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    return session_factory(engine)


def _count(sessions: Any, model: Any) -> int:
    with sessions.begin() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _png_title(path: Path) -> str:
    with Image.open(path) as image:
        return str(image.info["Title"])


# --- plans and titles ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
def test_offline_plans_name_their_stand_ins(scale: str) -> None:
    plans = {p.key: p for p in plan_figures(scale)}
    assert list(plans) == list(FIGURES)
    assert plans["fig4"].base.dataset.kind == "gaussian_mixture"
    assert plans["fig4"].base.model.kind == "linear"
    assert "synthetic Gaussian mixture" in plans["fig4"].title
    assert plans["fig5"].base.dataset.kind == "digits"
    assert plans["fig5"].base.model.kind == "two_layer"
    assert plans["fig5"].base.model.activation == "leaky_softplus"
    assert "digits (offline stand-in for MNIST)" in plans["fig5"].title
    assert plans["fig6"].base.dataset.kind == "mnist1d"
    assert (plans["fig6"].base.model.kind, plans["fig6"].base.model.depth) == ("mlp", 8)
    assert plans["fig6"].base.model.activation == "gelu"
    assert "mnist1d (offline stand-in for CIFAR-10)" in plans["fig6"].title
    for plan in plans.values():
        cells = plan.cells()
        assert len(cells) == len(plan.lrs) * len(plan.batch_sizes) >= 2
        assert {(s.optimizer.lr, s.optimizer.batch_size) for _, s in cells} == {
            (lr, b) for lr in plan.lrs for b in plan.batch_sizes
        }
    assert len(plans["fig4"].batch_sizes) >= 2  # Fig. 4 compares batch sizes too


def test_paper_scale_uses_the_example_specs_sizes() -> None:
    examples = {
        "fig4": "fig4_linear.yaml",
        "fig5": "fig5_digits_two_layer.yaml",
        "fig6": "fig6_mnist1d_mlp.yaml",
    }
    for plan in plan_figures("paper"):
        example = RunSpec.from_file(EXAMPLES / examples[plan.key])
        base = plan.base
        assert base.dataset == example.dataset, plan.key
        assert base.model == example.model, plan.key
        assert base.optimizer.steps == example.optimizer.steps
        assert base.optimizer.sampler == example.optimizer.sampler
        assert example.optimizer.batch_size in plan.batch_sizes
        same = ("every", "drift_samples", "drift_max_samples", "sharpness_every", "eval_subset", "test_every")
        assert base.instrument.model_dump(include=set(same)) == example.instrument.model_dump(include=set(same))


def test_bad_scale_and_figure_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        plan_figures("huge")
    with pytest.raises(ValueError, match="fig9"):
        plan_figures("small", ["fig9"])
    db = str(tmp_path / "eos.sqlite")
    assert _invoke("--out", str(tmp_path), "--db", db, "--only", "fig4,fig9").exit_code == 2
    assert _invoke("--out", str(tmp_path), "--db", db, "--scale", "huge").exit_code == 2


# --- the command: train once, then reuse -----------------------------------------------------------


def test_figures_are_drawn_then_reused_from_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, db = tmp_path / "figures", tmp_path / "store" / "eos.sqlite"
    result = _invoke("--out", str(out), "--db", str(db), "--scale", "tiny")
    assert result.exit_code == 0, result.output
    titles = {p.key: p.title for p in plan_figures("tiny")}
    for key in FIGURES:
        path = out / f"{key}.png"
        assert path.stat().st_size > 10_000
        assert _png_title(path) == titles[key]
    assert "digits (offline stand-in for MNIST)" in _png_title(out / "fig5.png")
    assert "mnist1d (offline stand-in for CIFAR-10)" in _png_title(out / "fig6.png")
    sessions = _sessions(db)
    runs = sum(len(p.cells()) for p in plan_figures("tiny"))
    assert _count(sessions, Run) == runs
    assert _count(sessions, Experiment) == 3
    assert f"0 run(s) reused from the store, {runs} trained" in _text(result)

    # Second time: nothing is trained (training would raise), the store is unchanged.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr("worker.runner.train_slice", refuse)
    for path in out.glob("*.png"):
        path.unlink()
    result = _invoke("--out", str(out), "--db", str(db), "--scale", "tiny")
    assert result.exit_code == 0, result.output
    assert f"{runs} run(s) reused from the store, 0 trained" in _text(result)
    assert all((out / f"{key}.png").is_file() for key in FIGURES)
    assert (_count(sessions, Run), _count(sessions, Experiment)) == (runs, 3)
    report = make_figures(out, sessions, scale="tiny", only=["fig4"], show=False)
    assert (report.reused, report.trained) == (len(plan_figures("tiny", ["fig4"])[0].cells()), 0)


def test_only_the_missing_cells_are_trained(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path / "eos.sqlite")
    first = make_figures(tmp_path, sessions, scale="tiny", only=["fig4"], show=False)
    cells = len(first.figures[0].runs)
    assert (first.reused, first.trained) == (0, cells)
    failed = first.figures[0].runs[1]
    with sessions.begin() as session:  # a failed run is not a result: it is redone
        session.get(Run, failed.run_id).status = "failed"
    second = make_figures(tmp_path, sessions, scale="tiny", only=["fig4"], show=False)
    assert (second.reused, second.trained) == (cells - 1, 1)
    redone = second.figures[0].runs[1]
    assert redone.run_id != failed.run_id and redone.params == failed.params
    assert redone.status == "completed"
    # Same seed, same trajectory: the redone run trains alone, the first in a slice with the other
    # step size, so they agree to float32 rounding (eos_core.train_slice), not bit for bit.
    np.testing.assert_allclose(redone.trace["loss"], failed.trace["loss"], rtol=1e-5, atol=0)
    with sessions.begin() as session:  # the new experiment holds only the redone cell
        new = session.scalars(select(Run).where(Run.experiment_id == second.figures[0].experiment_id)).all()
        assert [r.id for r in new] == [redone.run_id]
    assert _count(sessions, Run) == cells + 1


# --- MNIST and CIFAR-10 from EOS_DATA_DIR ----------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_tiny_mnist(folder: Path, n_train: int = 40, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx(arrays[key])))


def write_tiny_cifar(base: Path) -> None:
    rng = np.random.default_rng(0)
    folder = base / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_TRAIN + CIFAR_TEST:
        batch = {b"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_mnist_and_cifar10_are_used_when_their_files_are_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_tiny_mnist(data / "mnist")
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(data))
    for scale in ("tiny", "small", "paper"):
        _, fig5, fig6 = plan_figures(scale)
        assert fig5.base.dataset.kind == "mnist"
        assert fig5.title.endswith("on MNIST") and "stand-in" not in fig5.title
        assert fig6.base.dataset.kind == "mnist1d" and "offline stand-in for CIFAR-10" in fig6.title
    paper, example = plan_figures("paper", ["fig5"])[0], RunSpec.from_file(EXAMPLES / "fig5_mnist_two_layer.yaml")
    assert (paper.base.dataset, paper.base.model) == (example.dataset, example.model)
    assert paper.base.optimizer.steps == example.optimizer.steps
    assert paper.batch_sizes == (example.optimizer.batch_size,)

    write_tiny_cifar(data)
    fig6 = plan_figures("tiny", ["fig6"])[0]
    assert fig6.base.dataset.kind == "cifar10" and fig6.title.endswith("on CIFAR-10")

    out = tmp_path / "out"
    result = _invoke("--out", str(out), "--db", str(tmp_path / "eos.sqlite"), "--scale", "tiny", "--only", "fig5")
    assert result.exit_code == 0, result.output
    assert _png_title(out / "fig5.png") == "Fig. 5: two-layer leaky-softplus network on MNIST"
    assert not (out / "fig4.png").exists()
    with _sessions(tmp_path / "eos.sqlite").begin() as session:
        kinds = {r.spec["dataset"]["kind"] for r in session.scalars(select(Run))}
    assert kinds == {"mnist"}


# --- the pieces of the drawing ---------------------------------------------------------------------


def _run(
    step: np.ndarray, loss: np.ndarray, lr: float, entrance: int | None = 0, applies: bool | None = True
) -> RunData:
    spec = RunSpec.model_validate({"optimizer": {"lr": lr}})
    nan = np.full(len(step), np.nan)
    trace = {"step": step, "loss": loss, "rel_drift": nan, "stable": nan, "stable_p": nan, "test_acc": nan}
    return RunData({}, spec, 1, "completed", True, RunSummary(entrance_step=entrance, rate_applies=applies), trace)


def test_the_guide_recovers_c_over_eta_t() -> None:
    step = np.arange(0, 10001)
    loss = 3.0 / (10.0 * np.maximum(step, 1))
    loss[:100] = 5.0  # an early transient outside the fitted window
    guide = tail_guide(_run(step, loss, lr=10.0))
    assert guide is not None
    assert guide.slope == pytest.approx(-1.0, abs=1e-6)
    assert pytest.approx(3.0, rel=1e-6) == guide.C
    assert guide.t_from == 10000 / 10 ** (2 * figures.GUIDE_DECADES) and guide.t_to == 10000
    late = tail_guide(_run(step, loss, lr=10.0, entrance=9000))
    assert late is not None and late.t_from == 9000
    assert tail_guide(_run(step[:2], loss[:2], lr=10.0)) is None
    assert tail_guide(_run(step, loss, lr=10.0, applies=False)) is None  # not separable: no 1/t guide
    assert tail_guide(_run(step, loss, lr=10.0, applies=None)) is not None  # not checked: drawn


def test_binned_median_and_a_figure_of_a_failed_run(tmp_path: Path) -> None:
    x = np.arange(1, 1001, dtype=float)
    xs, ys = binned_median(x, np.where(x > 100, 1.0, -1.0), bins=10)
    assert np.all(np.diff(xs) > 0) and ys[0] == -1.0 and ys[-1] == 1.0
    plan = plan_figures("tiny", ["fig5"])[0]
    empty = {name: np.array([]) for name in ("step", "loss", "rel_drift", "stable", "stable_p", "test_acc")}
    runs = [
        RunData(params, spec, i, "failed", False, RunSummary(), dict(empty))
        for i, (params, spec) in enumerate(plan.cells())
    ]
    path = figures.render(FigureRuns(plan, runs), tmp_path / "fig5.png", "tiny", dpi=50)
    assert _png_title(path) == plan.title
