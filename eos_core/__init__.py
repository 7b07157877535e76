"""eos_core: SGD at the edge of stability, instrumented and validated against exact answers.

    from eos_core import RunSpec, train
    result = train(RunSpec.from_file("examples/fig4_linear.yaml"))

This package imports no web, database or queue library.
"""

from .analysis import analyze
from .spec import DatasetSpec, InstrumentSpec, ModelSpec, OptimizerSpec, RunSpec
from .trace import COLUMNS, METRICS
from .train import RunResult, StopTraining, train

__all__ = [
    "COLUMNS",
    "METRICS",
    "DatasetSpec",
    "InstrumentSpec",
    "ModelSpec",
    "OptimizerSpec",
    "RunResult",
    "RunSpec",
    "StopTraining",
    "analyze",
    "train",
]
__version__ = "0.1.0"
