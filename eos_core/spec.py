"""The run specification: one pydantic model, loadable from YAML or JSON.

Every field has a default, so `RunSpec()` is a valid (small, synthetic) run. Bad
input raises `pydantic.ValidationError` naming the field and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DatasetKind = Literal["gaussian_mixture", "digits", "mnist1d", "mnist", "fashion_mnist", "cifar10"]
ModelKind = Literal["linear", "two_layer", "mlp"]
Sampler = Literal["with_replacement", "without_replacement", "reshuffle"]

LEAKY_BASES = ("tanh", "sigmoid", "softplus", "huberized_relu", "gelu", "silu")
PLAIN_ACTIVATIONS = ("gelu", "relu", "tanh", "silu", "softplus", "sigmoid", "identity")
ACTIVATIONS = tuple(f"leaky_{b}" for b in LEAKY_BASES) + PLAIN_ACTIVATIONS

# "exact" drift enumerates every distinct batch; beyond this many it is refused.
MAX_EXACT_BATCHES = 4096
# Bounds on every integer: the store keeps steps (and the step reached) as 32-bit integers, and
# a seed must suit every generator it feeds (numpy's legacy seed, used by mnist1d, is 32-bit).
MAX_INT = 2**31 - 1
MAX_SEED = 2**32 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSpec(_Strict):
    kind: DatasetKind = "gaussian_mixture"
    classes: int = Field(5, ge=2, le=MAX_INT, description="gaussian_mixture: number of classes")
    per_class: int = Field(100, ge=1, le=MAX_INT, description="gaussian_mixture: points per class")
    dim: int = Field(20, ge=1, le=MAX_INT, description="gaussian_mixture: input dimension")
    separation: float = Field(3.0, gt=0, description="gaussian_mixture: scale of the random class means")
    noise: float = Field(1.0, ge=0, description="gaussian_mixture: sigma of each class")
    n_train: int | None = Field(None, ge=1, le=MAX_INT, description="use a random subset of this many training points")
    n_test: int | None = Field(None, ge=0, le=MAX_INT, description="use a random subset of this many test points")
    class_subset: list[Annotated[int, Field(le=MAX_INT)]] | None = Field(
        None, description="keep only these classes, relabelled 0..k-1"
    )
    test_fraction: float = Field(0.2, ge=0, lt=1, description="held out when the dataset has no test split")
    data_seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="seed of the data draw (0 to 2^32 - 1); null uses the run's seed"
    )

    @field_validator("class_subset")
    @classmethod
    def _subset_distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("class_subset needs at least two classes")
            if len(set(v)) != len(v):
                raise ValueError("class_subset has repeated classes")
            if min(v) < 0:
                raise ValueError("class labels are non-negative")
        return v


class ModelSpec(_Strict):
    kind: ModelKind = "linear"
    width: int = Field(256, ge=1, le=MAX_INT, description="two_layer: hidden units m per class; mlp: hidden width")
    depth: int = Field(8, ge=1, le=MAX_INT, description="mlp: number of linear layers")
    activation: str = Field("leaky_softplus", description="activation of two_layer and mlp")
    leak: float = Field(0.5, description="c in phi(z) = c z + (1 - c) psi(z), in (0, 1]")
    huber_width: float = Field(1.0, gt=0, description="h of the huberized ReLU")
    init_scale: float = Field(1.0, ge=0, description="two_layer: w ~ N(0, init_scale^2 / d) (linear starts at zero)")

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        if v not in ACTIVATIONS:
            raise ValueError(f"unknown activation {v!r}; choose one of {', '.join(ACTIVATIONS)}")
        return v

    @field_validator("leak")
    @classmethod
    def _leak_range(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"leak must lie in (0, 1], got {v}")
        return v


class OptimizerSpec(_Strict):
    lr: float = Field(10.0, description="step size eta (before width rescaling)")
    batch_size: int = Field(16, ge=1, le=MAX_INT, description="B")
    steps: int = Field(5000, ge=0, le=MAX_INT, description="number of SGD updates")
    sampler: Sampler = "with_replacement"
    lr_scaling: Literal["auto", "none"] = Field(
        "auto", description="auto: eta_eff = eta * width for two_layer (the paper's scaling)"
    )

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float) -> float:
        if not v > 0 or v != v or v == float("inf"):
            raise ValueError(f"the step size must be a positive finite number, got {v}")
        return v


class InstrumentSpec(_Strict):
    every: int = Field(1, ge=1, le=MAX_INT, description="cadence of the per-step metrics")
    drift_samples: Annotated[int, Field(le=MAX_INT)] | Literal["exact"] = Field(
        32, description='K batches at least; 0 disables; "exact"'
    )
    drift_every: int = Field(1, ge=1, le=MAX_INT, description="cadence of the drift, in steps (on recorded steps)")
    drift_max_samples: int = Field(256, ge=1, le=MAX_INT, description="draw up to this many until the sign is clear")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="for the stable/unstable decision")
    sharpness_every: int = Field(10, ge=0, le=MAX_INT, description="0 disables sharpness and batch sharpness")
    batch_sharpness_samples: int = Field(8, ge=1, le=MAX_INT)
    sharpness_tol: float = Field(1e-4, gt=0, description="relative residual at which the eigensolver stops")
    sharpness_max_iter: int = Field(100, ge=2, le=MAX_INT, description="Lanczos steps per call at most")
    eval_subset: int | None = Field(
        None, ge=1, le=MAX_INT, description="fixed evaluation subset; null: whole training set"
    )
    test_every: int = Field(100, ge=0, le=MAX_INT, description="0 disables the test metrics")
    chunk_rows: int = Field(256, ge=1, le=MAX_INT, description="rows per chunk handed to the sink")

    @field_validator("drift_samples")
    @classmethod
    def _nonnegative(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("drift_samples must be >= 0, or 'exact'")
        return v


class RunSpec(_Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0 to 2^32 - 1")
    dtype: Literal["float32", "float64"] = "float32"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    instrument: InstrumentSpec = Field(default_factory=InstrumentSpec)

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda"):
            return v
        if v.startswith("cuda:") and v[5:].isdigit():
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        ds, opt, ins = self.dataset, self.optimizer, self.instrument
        if ds.kind == "gaussian_mixture":
            n = known_train_size(self)
            if n is not None and opt.batch_size > n:
                raise ValueError(f"optimizer.batch_size={opt.batch_size} is larger than the training set ({n} points)")
            if ds.class_subset is not None and max(ds.class_subset) >= ds.classes:
                raise ValueError(f"dataset.class_subset names a class >= dataset.classes={ds.classes}")
        if ins.drift_samples == "exact":
            n = known_train_size(self)
            if n is not None:
                count = distinct_batches(n, opt.batch_size, opt.sampler)
                if count is None or count > MAX_EXACT_BATCHES:
                    raise ValueError(
                        f'instrument.drift_samples="exact" needs at most {MAX_EXACT_BATCHES} distinct batches; '
                        f"n={n}, batch_size={opt.batch_size} ({opt.sampler}) has "
                        f"{'too many to count' if count is None else count}"
                    )
        elif ins.drift_samples > ins.drift_max_samples:
            raise ValueError("instrument.drift_samples is larger than instrument.drift_max_samples")
        return self

    # --- loading -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls.model_validate(data)

    @classmethod
    def from_yaml(cls, text: str) -> RunSpec:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError("a run spec must be a YAML mapping")
        return cls.model_validate(data)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.model_validate(json.loads(text))

    @classmethod
    def from_file(cls, path: str | Path) -> RunSpec:
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".json":
            return cls.from_json(text)
        return cls.from_yaml(text)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @property
    def uses_width_scaling(self) -> bool:
        return self.model.kind == "two_layer" and self.optimizer.lr_scaling == "auto"

    @property
    def effective_lr(self) -> float:
        """The step actually applied: eta * m for the mean-field two-layer net by default."""
        scale = self.model.width if self.uses_width_scaling else 1
        return self.optimizer.lr * scale


def known_train_size(spec: RunSpec) -> int | None:
    """Training-set size when it follows from the spec alone (synthetic data), else None."""
    ds = spec.dataset
    if ds.kind != "gaussian_mixture":
        return None
    classes = len(ds.class_subset) if ds.class_subset else ds.classes
    total = classes * ds.per_class
    n = total - round(total * ds.test_fraction)
    if ds.n_train is not None:
        n = min(n, ds.n_train)
    return n


def distinct_batches(n: int, batch_size: int, sampler: str) -> int | None:
    """Number of distinct batches the sampler can draw, or None when astronomically many.

    The loss is symmetric in the batch's members, so a batch drawn with replacement is a
    multiset: C(n + B - 1, B) of them, with multinomial probabilities. Without replacement
    (and reshuffle, whose next batch is marginally a uniform subset) there are C(n, B),
    equally likely.
    """
    from math import comb

    if batch_size == 1:
        return n
    count = comb(n + batch_size - 1, batch_size) if sampler == "with_replacement" else comb(n, batch_size)
    return count if count < 2**62 else None
