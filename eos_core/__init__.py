"""eos_core: SGD at the edge of stability, instrumented and validated against exact answers.

    from eos_core import RunSpec, train
    result = train(RunSpec.from_file("examples/fig4_linear.yaml"))

This package imports no web, database or queue library.
"""

from typing import TYPE_CHECKING, Any

from .analysis import analyze
from .kappa import kappa_b
from .spec import DatasetSpec, InstrumentSpec, ModelSpec, OptimizerSpec, RunSpec
from .summary import RunSummary
from .trace import COLUMNS, METRICS

if TYPE_CHECKING:
    from .training import RunResult, StopTraining, train, train_slice

_LAZY = {"RunResult", "StopTraining", "train", "train_slice"}


def __getattr__(name: str) -> Any:
    """The training loop (and torch) load on first use: the API and store never pay for them."""
    if name in _LAZY:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'eos_core' has no attribute {name!r}")


__all__ = [
    "COLUMNS",
    "METRICS",
    "DatasetSpec",
    "InstrumentSpec",
    "ModelSpec",
    "OptimizerSpec",
    "RunResult",
    "RunSpec",
    "RunSummary",
    "StopTraining",
    "analyze",
    "kappa_b",
    "train",
    "train_slice",
]
__version__ = "0.1.0"
