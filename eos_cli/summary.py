"""Readable tables of run summaries for the terminal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eos_client.models import params_label
from eos_core.summary import RunSummary


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _exits(s: RunSummary) -> str:
    """Exits per 1,000 steps in S after entrance; 'n.r.' where the cadence does not resolve them."""
    if s.exit_rate_per_1000 is not None:
        return _fmt(s.exit_rate_per_1000, 2)
    return "n.r." if s.exits_resolved is False else "-"


def _kappa(s: RunSummary) -> str:
    if s.kappa_B is None:
        return "-"
    return f"{'<=' if s.kappa_B_bound == 'upper' else '>='}{_fmt(s.kappa_B, 3)}"


def runs_table(rows: Iterable[dict[str, Any]], title: str = "runs") -> Table:
    """One row per run: the regime analysis a researcher reads first (fields of eos_core.summary.RunSummary).

    exits/1k: exits per 1,000 steps in S after entrance ("n.r.": not resolved at the drift cadence);
    in S: fraction of steps in S from the first drift measurement on (undecided steps are not in S);
    κ_B: "<=" an upper bound (5% quantile of η·L outside S), ">=" a lower bound (none outside S).
    """
    table = Table(title=title)
    columns = ("run", "params", "status", "entrance", "exits/1k", "in S", "slope", "κ_B", "final loss", "test acc")
    for column in columns:
        table.add_column(column, justify="left" if column in ("params", "status") else "right")
    for row in rows:
        s = RunSummary.from_stored(row.get("summary")) or RunSummary()
        params = params_label(row.get("params") or {}) or "-"
        table.add_row(
            str(row["id"]),
            params,
            row["status"],
            _fmt(s.entrance_step),
            _exits(s),
            _fmt(s.fraction_in_S, 2),
            _fmt(s.rate_slope, 3) if s.rate_applies is not False else "n/a",
            _kappa(s),
            _fmt(s.final_loss, 3),
            _fmt(s.final_test_acc, 3),
        )
    return table


def print_failures(rows: Iterable[dict[str, Any]], console: Console) -> None:
    """Below a runs table: why each run that failed or diverged did not complete (a row's "failure",
    eos_client.models.failure_text), the error's type and message in full."""
    for row in rows:
        if row.get("failure"):
            console.print(f"[red]run {row['id']}[/red] {escape(row['failure'])}", soft_wrap=True, highlight=False)


def print_runs(rows: Iterable[dict[str, Any]], title: str = "runs", console: Console | None = None) -> None:
    rows = list(rows)
    console = console or Console()
    if not console.is_terminal:  # piped output (a log, CI) would be squeezed to 80 columns
        console = Console(file=console.file, width=140)
    console.print(runs_table(rows, title))
    print_failures(rows, console)
