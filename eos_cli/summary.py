"""Readable tables of run summaries for the terminal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def runs_table(rows: Iterable[dict[str, Any]], title: str = "runs") -> Table:
    """One row per run: the regime analysis a researcher reads first."""
    table = Table(title=title)
    for column in ("run", "params", "status", "entrance", "exits", "in S", "slope", "final loss", "test acc", "s/step"):
        table.add_column(column, justify="left" if column in ("params", "status") else "right")
    for row in rows:
        s = row.get("summary") or {}
        timing = s.get("timing") or {}
        params = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in (row.get("params") or {}).items()) or "-"
        table.add_row(
            str(row["id"]),
            params,
            row["status"],
            _fmt(s.get("entrance_step")),
            _fmt(s.get("n_exits")),
            _fmt(s.get("fraction_in_S_after_entrance"), 2),
            _fmt(s.get("rate_slope"), 3),
            _fmt(s.get("final_loss"), 3),
            _fmt(s.get("final_test_acc"), 3),
            _fmt(timing.get("seconds_per_step"), 2),
        )
    return table


def print_runs(rows: Iterable[dict[str, Any]], title: str = "runs", console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:  # piped output (a log, CI) would be squeezed to 80 columns
        console = Console(file=console.file, width=140)
    console.print(runs_table(rows, title))
