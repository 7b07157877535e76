"""RunSpec: loading from YAML and JSON, round trips, and refusals that name the field and the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from eos_core.spec import ACTIVATIONS, MAX_EXACT_BATCHES, RunSpec, distinct_batches, known_train_size

EXAMPLE_YAML = """\
name: fig4-linear
seed: 0
dtype: float32
device: auto
dataset: {kind: gaussian_mixture, classes: 5, per_class: 100, dim: 20, separation: 3.0, noise: 1.0, n_train: null,
  class_subset: null, test_fraction: 0.2}
model: {kind: linear, width: 256, depth: 8, activation: leaky_softplus, leak: 0.5}
optimizer: {lr: 10.0, batch_size: 16, steps: 5000, sampler: with_replacement, lr_scaling: auto}
instrument: {every: 1, drift_samples: 16, drift_max_samples: 256, confidence: 0.95, sharpness_every: 10,
  batch_sharpness_samples: 8, eval_subset: null, test_every: 100}
"""


def nested(**sections: dict[str, Any]) -> dict[str, Any]:
    return {key: dict(value) for key, value in sections.items()}


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(pydantic.ValidationError) as info:
        RunSpec.from_dict(data)
    return str(info.value)


# --- loading and round trips ----------------------------------------------------------------------


def test_example_yaml_loads_every_field() -> None:
    spec = RunSpec.from_yaml(EXAMPLE_YAML)
    assert spec.name == "fig4-linear" and spec.seed == 0 and spec.dtype == "float32" and spec.device == "auto"
    assert spec.dataset.kind == "gaussian_mixture"
    assert (spec.dataset.classes, spec.dataset.per_class, spec.dataset.dim) == (5, 100, 20)
    assert spec.dataset.separation == 3.0 and spec.dataset.noise == 1.0 and spec.dataset.test_fraction == 0.2
    assert spec.dataset.n_train is None and spec.dataset.class_subset is None
    assert spec.model.kind == "linear" and spec.model.activation == "leaky_softplus" and spec.model.leak == 0.5
    assert (spec.optimizer.lr, spec.optimizer.batch_size, spec.optimizer.steps) == (10.0, 16, 5000)
    assert spec.optimizer.sampler == "with_replacement" and spec.optimizer.lr_scaling == "auto"
    assert spec.instrument.drift_samples == 16 and spec.instrument.sharpness_every == 10
    assert spec.instrument.eval_subset is None and spec.instrument.test_every == 100
    assert known_train_size(spec) == 400


def test_yaml_and_json_give_the_same_spec() -> None:
    data = yaml.safe_load(EXAMPLE_YAML)
    from_yaml = RunSpec.from_yaml(EXAMPLE_YAML)
    assert RunSpec.from_json(json.dumps(data)) == from_yaml
    assert RunSpec.from_dict(data) == from_yaml


def test_to_yaml_round_trips() -> None:
    spec = RunSpec.from_yaml(EXAMPLE_YAML)
    text = spec.to_yaml()
    assert RunSpec.from_yaml(text) == spec
    changed = spec.model_copy(
        update={
            "name": "other",
            "dataset": spec.dataset.model_copy(update={"class_subset": [4, 0, 2], "n_train": 50}),
            "instrument": spec.instrument.model_copy(update={"drift_samples": "exact"}),
            "optimizer": spec.optimizer.model_copy(update={"batch_size": 1}),
        }
    )
    again = RunSpec.from_yaml(changed.to_yaml())
    assert again == changed
    assert again.dataset.class_subset == [4, 0, 2] and again.instrument.drift_samples == "exact"
    assert again != spec


def test_from_file_reads_yaml_and_json(tmp_path: Path) -> None:
    spec = RunSpec.from_yaml(EXAMPLE_YAML)
    (tmp_path / "a.yaml").write_text(EXAMPLE_YAML)
    (tmp_path / "b.json").write_text(json.dumps(spec.model_dump(mode="json")))
    assert RunSpec.from_file(tmp_path / "a.yaml") == spec
    assert RunSpec.from_file(str(tmp_path / "b.json")) == spec


def test_defaults_are_a_valid_run() -> None:
    spec = RunSpec()
    assert RunSpec.from_yaml(spec.to_yaml()) == spec
    assert RunSpec.from_yaml("{}") == spec


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n", "just a string"])
def test_yaml_that_is_not_a_mapping_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="mapping"):
        RunSpec.from_yaml(text)


# --- refusals --------------------------------------------------------------------------------------


def test_batch_larger_than_the_dataset() -> None:
    message = refusal(nested(optimizer={"batch_size": 401}))
    assert "optimizer.batch_size=401" in message and "larger than the training set (400 points)" in message
    assert RunSpec.from_dict(nested(optimizer={"batch_size": 400})).optimizer.batch_size == 400


def test_batch_bound_follows_subset_and_n_train() -> None:
    # 2 of 6 classes x 20 points = 40, 8 held out: 32 training points
    dataset = {"classes": 6, "per_class": 20, "class_subset": [0, 5]}
    assert RunSpec.from_dict(nested(dataset=dataset, optimizer={"batch_size": 32})).optimizer.batch_size == 32
    assert "(32 points)" in refusal(nested(dataset=dataset, optimizer={"batch_size": 33}))
    assert "(10 points)" in refusal(nested(dataset={"n_train": 10}, optimizer={"batch_size": 11}))


def test_batch_bound_is_not_applied_to_file_datasets() -> None:
    spec = RunSpec.from_dict(nested(dataset={"kind": "mnist"}, optimizer={"batch_size": 100_000}))
    assert known_train_size(spec) is None


@pytest.mark.parametrize("lr", [0, -1.0, float("nan"), float("inf")])
def test_step_size_must_be_positive_and_finite(lr: float) -> None:
    message = refusal(nested(optimizer={"lr": lr}))
    assert "optimizer.lr" in message and "positive finite" in message


def test_unknown_activation() -> None:
    message = refusal(nested(model={"activation": "leaky_relu6"}))
    assert "model.activation" in message and "unknown activation 'leaky_relu6'" in message
    for name in ACTIVATIONS:
        assert RunSpec.from_dict(nested(model={"activation": name})).model.activation == name


@pytest.mark.parametrize("leak", [0, 0.0, -0.1, 1.5])
def test_leak_outside_zero_one(leak: float) -> None:
    message = refusal(nested(model={"leak": leak}))
    assert "model.leak" in message and "(0, 1]" in message


@pytest.mark.parametrize("leak", [1e-6, 0.5, 1.0])
def test_leak_inside_zero_one(leak: float) -> None:
    assert RunSpec.from_dict(nested(model={"leak": leak})).model.leak == leak


def test_exact_drift_with_too_many_batches() -> None:
    # n = 400, B = 2 with replacement: C(401, 2) = 80200 distinct multisets
    message = refusal(nested(instrument={"drift_samples": "exact"}, optimizer={"batch_size": 2}))
    assert 'instrument.drift_samples="exact"' in message and str(MAX_EXACT_BATCHES) in message
    assert "80200" in message
    # B = 16 with replacement: too many even to count
    assert "too many to count" in refusal(nested(instrument={"drift_samples": "exact"}))


@pytest.mark.parametrize(
    ("optimizer", "count"),
    [
        ({"batch_size": 1}, 400),
        ({"batch_size": 400, "sampler": "without_replacement"}, 1),
        ({"batch_size": 399, "sampler": "without_replacement"}, 400),
    ],
)
def test_exact_drift_with_few_batches_is_accepted(optimizer: dict[str, Any], count: int) -> None:
    spec = RunSpec.from_dict(nested(instrument={"drift_samples": "exact"}, optimizer=optimizer))
    assert spec.instrument.drift_samples == "exact"
    assert distinct_batches(400, spec.optimizer.batch_size, spec.optimizer.sampler) == count


def test_drift_samples_bounds() -> None:
    assert "drift_samples" in refusal(nested(instrument={"drift_samples": -1}))
    assert "drift_max_samples" in refusal(nested(instrument={"drift_samples": 300, "drift_max_samples": 256}))
    assert "instrument.drift_samples" in refusal(nested(instrument={"drift_samples": "all"}))


@pytest.mark.parametrize("key", ["lerning_rate", "optimiser"])
def test_unknown_top_level_key(key: str) -> None:
    message = refusal({key: 1})
    assert key in message and "Extra inputs are not permitted" in message


def test_unknown_nested_key() -> None:
    message = refusal(nested(optimizer={"momentum": 0.9}))
    assert "optimizer.momentum" in message and "Extra inputs are not permitted" in message


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "mps"])
def test_bad_device_string(device: str) -> None:
    message = refusal({"device": device})
    assert "device" in message and repr(device) in message and "auto, cpu, cuda or cuda:N" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_good_device_strings(device: str) -> None:
    assert RunSpec.from_dict({"device": device}).device == device


def test_class_subset_checks() -> None:
    assert "class_subset" in refusal(nested(dataset={"classes": 3, "class_subset": [0, 3]}))
    assert "repeated" in refusal(nested(dataset={"class_subset": [1, 1]}))
    assert "at least two" in refusal(nested(dataset={"class_subset": [1]}))


# --- effective step size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "scaling", "width", "expected"),
    [
        ("two_layer", "auto", 256, 2.5 * 256),
        ("two_layer", "auto", 3, 7.5),
        ("two_layer", "none", 256, 2.5),
        ("linear", "auto", 256, 2.5),
        ("mlp", "auto", 256, 2.5),
        ("mlp", "none", 64, 2.5),
    ],
)
def test_effective_lr(kind: str, scaling: str, width: int, expected: float) -> None:
    spec = RunSpec.from_dict(nested(model={"kind": kind, "width": width}, optimizer={"lr": 2.5, "lr_scaling": scaling}))
    assert spec.effective_lr == pytest.approx(expected)
    assert spec.uses_width_scaling == (kind == "two_layer" and scaling == "auto")
