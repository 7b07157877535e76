"""The trace recorder's columns."""

from __future__ import annotations

import numpy as np

from eos_core.trace import COLUMNS, METRICS, TraceRecorder


def test_result_holds_every_column_in_order_as_copies() -> None:
    recorder = TraceRecorder(capacity=4, chunk_rows=2, sink=None)
    for step in (0, 5):
        row = recorder.new_row(step)
        recorder.set(row, loss=float(step) + 1.0, acc=0.5)
    trace = recorder.result()
    assert tuple(trace) == (*METRICS, "step") and set(trace) == set(COLUMNS)
    assert trace["step"].tolist() == [0, 5] and trace["loss"].tolist() == [1.0, 6.0]
    assert np.isnan(trace["drift"]).all() and len(trace["drift"]) == 2
    recorder.set(0, loss=9.0)
    assert trace["loss"][0] == 1.0  # a copy, not the recorder's block
