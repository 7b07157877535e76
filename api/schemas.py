"""Request and response schemas. Built from ORM rows with `from_attributes`; never ORM classes themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from eos_core.spec import ACTIVATIONS, RunSpec
from eos_core.summary import RunSummary
from store.lifecycle import RunStatus as Lifecycle

from .inputs import NO_NUL, Text

RunStatus = Literal["queued", "running", "completed", "diverged", "failed", "cancelled"]
assert get_args(RunStatus) == tuple(Lifecycle), "RunStatus must list store.lifecycle.RunStatus"

Responses = dict[int | str, dict[str, Any]]  # extra OpenAPI responses of a route

# --- requests -------------------------------------------------------------------------------

MAX_NAME_LENGTH = 200  # experiments.name is a String(200)
MAX_TAG_LENGTH = 200


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its `$defs` written in place of each `$ref` to them (no recursive models)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[ref.removeprefix("#/$defs/")]), **resolve(rest)}
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _no_nul(node: Any) -> Any:
    """Every free-text string of a JSON schema states that it may not hold NUL characters."""
    if isinstance(node, dict):
        node = {k: _no_nul(v) for k, v in node.items()}
        if node.get("type") == "string" and not {"enum", "const", "pattern"} & node.keys():
            node["pattern"] = NO_NUL
        return node
    if isinstance(node, list):
        return [_no_nul(item) for item in node]
    return node


def _spec_schema() -> dict[str, Any]:
    schema = _no_nul(inline_refs(RunSpec.model_json_schema()))
    # What RunSpec's validators check and its JSON schema does not say.
    model = schema["properties"]["model"]["properties"]
    model["activation"].pop("pattern", None)
    model["activation"]["enum"] = list(ACTIVATIONS)
    model["leak"].update(exclusiveMinimum=0, maximum=1)
    schema["properties"]["optimizer"]["properties"]["lr"]["exclusiveMinimum"] = 0
    for option in schema["properties"]["instrument"]["properties"]["drift_samples"]["anyOf"]:
        if option.get("type") == "integer":
            option["minimum"] = 0
    return schema


# The spec is validated by the store (with the sweep's values, so that an error names the sweep when
# the value came from there); the OpenAPI document still describes every field, type and bound.
SPEC_SCHEMA = {
    **_spec_schema(),
    "title": "RunSpec",
    "description": "a RunSpec as JSON (eos_core/spec.py); omitted fields take their defaults. Text may not hold "
    "NUL characters or lone surrogates, numbers must be finite.",
}
SWEEP_SCHEMA = {
    "anyOf": [
        {"type": "object", "additionalProperties": {"type": "array", "minItems": 1, "items": {}}},
        {"type": "null"},
    ],
    "description": "dotted spec path -> values; the experiment gets one run per grid cell",
}


class ExperimentCreate(BaseModel):
    """One run spec, or a grid over it: `sweep` maps dotted spec paths to the values to try."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "spec": {"model": {"kind": "two_layer"}, "optimizer": {"lr": 1.0, "steps": 2000}},
                    "sweep": {"optimizer.lr": [0.5, 1.0, 2.0], "optimizer.batch_size": [8, 32]},
                    "name": "lr-batch grid",
                    "tags": ["two_layer"],
                }
            ]
        },
    )

    spec: Annotated[dict[str, Any], WithJsonSchema(SPEC_SCHEMA)]
    sweep: Annotated[dict[str, list[Any]] | None, WithJsonSchema(SWEEP_SCHEMA)] = None
    name: Text | None = Field(
        None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description=f"defaults to spec.name (which must then be at most {MAX_NAME_LENGTH} characters)",
    )
    tags: list[Annotated[Text, Field(max_length=MAX_TAG_LENGTH)]] = Field(
        default_factory=list, max_length=50, description="free labels, filterable"
    )


# --- responses ------------------------------------------------------------------------------


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RunTimings(BaseModel):
    created_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class RunEstimate(BaseModel):
    """What the run was estimated to cost at submission (eos_core/resources.py)."""

    memory_gib: float = Field(description="peak memory, GiB")
    tflop: float = Field(description="work, 10^12 floating-point operations")
    parameters: int


class RunPublic(_FromRow):
    id: int
    experiment_id: int
    name: str = Field(description="spec.name: the base name with the swept values of this cell")
    params: dict[str, Any] = Field(description="the swept values of this cell (dotted path -> value)")
    status: RunStatus
    queue: str
    progress: float
    step: int
    steps: int
    attempts: int
    worker: str | None
    cancel_requested: bool
    spec: dict[str, Any] = Field(description="the expanded, validated spec this run trains")
    timings: RunTimings
    summary: RunSummary | None = Field(description="the analysis of the finished trace (eos_core.summary)")
    dataset_info: dict[str, Any] | None
    error: str | None
    created_at: datetime
    estimate: RunEstimate | None = Field(
        None, description="its cost estimated from the spec (on GET /runs/{id}, GET /experiments/{id} and creation)"
    )
    queue_served: bool | None = Field(
        None,
        description="whether a live worker serves this run's queue (null: the embedded store, which trains "
        "runs itself)",
    )


class RunsPublic(BaseModel):
    items: list[RunPublic]
    total: int


class ExperimentPublic(_FromRow):
    id: int
    name: str
    owner: str
    tags: list[str]
    spec: dict[str, Any]
    sweep: dict[str, Any]
    created_at: datetime
    runs: list[RunPublic] | None = Field(None, description="present on GET /experiments/{id} and on creation")
    warnings: list[str] = Field(
        default_factory=list, description="e.g. queued runs on a queue that no live worker serves (they wait)"
    )


class ExperimentsPublic(BaseModel):
    items: list[ExperimentPublic]
    total: int
    limit: int
    offset: int


class KappaPublic(BaseModel):
    """κ_B pooled over the analysed runs of an experiment with this batch size (eos_core/kappa.py)."""

    batch_size: int
    runs: int = Field(description="runs pooled")
    run_ids: list[int]
    kappa_B: float | None = Field(
        description="bound 'upper': the 5% quantile of η·L over the pooled rows judged outside S (at most 5% of "
        "the steps seen outside S had a smaller η·L); bound 'lower' (no row outside S): the 95% quantile of η·L "
        "over the rows in S"
    )
    kappa_B_bound: Literal["upper", "lower"] | None
    kappa_B_interval: list[float | None] | None = Field(
        description="95% distribution-free order-statistic interval of that quantile; null end: open"
    )
    kappa_B_quantile: float
    kappa_B_rows_outside: int = Field(description="decided rows outside S pooled")
    kappa_B_rows_in_S: int = Field(description="decided rows in S pooled")


class KappasPublic(BaseModel):
    experiment_id: int
    items: list[KappaPublic] = Field(description="one per batch size, by increasing B")


class EventPublic(_FromRow):
    id: int
    run_id: int
    kind: str
    step: int | None
    details: dict[str, Any]
    created_at: datetime


class EventsPublic(BaseModel):
    items: list[EventPublic]
    total: int


Column = list[float | None]


class TracePublic(BaseModel):
    """Columns of equal length; per metric the bucket value and its min/max. NaN and inf are null."""

    run_id: int
    metrics: list[str]
    points: int = Field(description="length of every column")
    step: list[int] = Field(description="the (first) step of each point")
    columns: dict[str, Column] = Field(description="metric, metric_min, metric_max for each requested metric")


class CompareRun(BaseModel):
    id: int
    experiment_id: int
    name: str
    status: str
    params: dict[str, Any]
    summary: RunSummary | None


class CompareSeries(BaseModel):
    run_id: int
    columns: dict[str, Column] = Field(description="metric -> value at each grid step (null outside the run)")


class ComparePublic(BaseModel):
    runs: list[CompareRun]
    metrics: list[str]
    step: list[int] = Field(description="the common step grid every series is aligned to")
    series: list[CompareSeries]


class Message(BaseModel):
    detail: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    broker: str
