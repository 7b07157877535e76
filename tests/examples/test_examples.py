"""The example specs in examples/: every one is a valid RunSpec, and the offline ones run end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from eos_core import RunSpec, train
from eos_core.data import DatasetFilesMissing
from eos_core.data.files import DATA_DIR_VARIABLE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL = sorted(EXAMPLES.glob("*.yaml"))
FIGURES = {
    "fig4_linear.yaml": ("gaussian_mixture", "linear"),
    "fig5_mnist_two_layer.yaml": ("mnist", "two_layer"),
    "fig5_digits_two_layer.yaml": ("digits", "two_layer"),
    "fig6_cifar10_mlp.yaml": ("cifar10", "mlp"),
    "fig6_mnist1d_mlp.yaml": ("mnist1d", "mlp"),
}
OFFLINE = ["fig4_linear.yaml", "fig5_digits_two_layer.yaml", "fig6_mnist1d_mlp.yaml"]
NEEDS_FILES = ["fig5_mnist_two_layer.yaml", "fig6_cifar10_mlp.yaml"]
STEPS = 20


def test_the_figure_examples_exist() -> None:
    names = {path.name for path in ALL}
    assert set(FIGURES) <= names


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_every_example_is_a_valid_run_spec(path: Path) -> None:
    spec = RunSpec.from_file(path)
    assert spec.optimizer.steps > 0
    assert RunSpec.from_yaml(spec.to_yaml()) == spec


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_examples_say_what_they_reproduce(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    assert text.startswith("# ")
    header = text.split("\nname:")[0]
    assert "Fig." in header
    spec = RunSpec.from_yaml(text)
    assert (spec.dataset.kind, spec.model.kind) == FIGURES[name]
    if spec.model.kind == "two_layer":
        assert spec.model.activation == "leaky_softplus" and spec.uses_width_scaling
    if spec.model.kind == "mlp":
        assert spec.model.depth == 8 and spec.model.activation == "gelu"


def shortened(name: str) -> RunSpec:
    """The example with a few steps, cheap instruments and (2-core CI) a narrow network on a small eval set."""
    spec = RunSpec.from_file(EXAMPLES / name)
    return spec.model_copy(
        update={
            "device": "cpu",
            "model": spec.model.model_copy(update={"width": min(spec.model.width, 32)}),
            "optimizer": spec.optimizer.model_copy(update={"steps": STEPS}),
            "instrument": spec.instrument.model_copy(
                update={
                    "every": 5,
                    "sharpness_every": 10,
                    "drift_samples": 4,
                    "drift_max_samples": 8,
                    "batch_sharpness_samples": 2,
                    "sharpness_max_iter": 20,
                    "test_every": 10,
                    "eval_subset": 256,
                }
            ),
        }
    )


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_examples_run_end_to_end(name: str) -> None:
    spec = shortened(name)
    result = train(spec)
    trace = result.trace
    assert result.status == "completed"
    np.testing.assert_array_equal(trace["step"], np.arange(0, STEPS + 1, 5))
    assert np.isfinite(trace["loss"]).all() and (trace["loss"] > 0).all()
    assert np.isfinite(trace["batch_loss"][:-1]).all()
    assert np.isfinite(trace["drift"]).all() and (trace["drift_samples_used"] >= 4).all()
    measured = trace["step"] % 10 == 0
    assert np.isfinite(trace["sharpness"][measured]).all() and np.isnan(trace["sharpness"][~measured]).all()
    assert np.isfinite(trace["test_loss"][measured]).all()
    assert result.summary["lr_effective"] == pytest.approx(spec.effective_lr)
    assert math.isfinite(result.summary["final_loss"])
    assert result.dataset_info["kind"] == spec.dataset.kind
    assert abs(result.dataset_info["R"] - 1.0) <= 1e-12


@pytest.mark.parametrize("name", NEEDS_FILES)
def test_file_examples_say_where_the_data_goes(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(DatasetFilesMissing, match=DATA_DIR_VARIABLE):
        train(shortened(name))
