"""`eos submit | status | watch | runs | trace | compare | plot | cancel`: the client from the shell.

Each command talks to a server (`--url`/`--token`, default EOS_URL / EOS_TOKEN) or, without a URL,
to the embedded store (`--db`, default EOS_DATABASE_URL or ~/.eos/eos.sqlite) through the very
same API, in this process; there, submitted runs train before `eos submit` returns.

Exit codes, the same for every command:
    0  ok
    1  the thing asked about failed: a watched or waited-for run failed, diverged or was cancelled;
       cancelling a finished run (409); a queued-run quota (429)
    2  bad input: an invalid spec or sweep (422, the message names the field), a missing file, a bad option
    3  not found: no such experiment or run (404)
    4  bad or missing token (401), or the run belongs to another user (403)
    5  server unreachable (connection refused, unknown host, timeout) or failing (5xx)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eos_client import Client, EosError, InputError, Run

from .summary import print_failures, runs_table

EXIT_CODES = (
    "Exit codes: 0 ok; 1 a run failed, diverged or was cancelled, or the request conflicts with a run's state; "
    "2 bad input (invalid spec: the message names the field); 3 not found; 4 bad or missing token; "
    "5 server unreachable or failing."
)
STATUSES = ("queued", "running", "completed", "diverged", "failed", "cancelled")
SHOWN_METRICS = "loss,acc,drift,stable_p,sharpness"

console = Console()
err = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="EOS_URL", help="server URL, e.g. http://eos:8000; unset: the embedded store"),
]
TokenOption = Annotated[str | None, typer.Option("--token", envvar="EOS_TOKEN", help="API token for --url")]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="embedded store: SQLite file or database URL (default EOS_DATABASE_URL, ~/.eos)"),
]
RunsArgument = Annotated[list[int], typer.Argument(help="run ids", show_default=False)]
MetricsOption = Annotated[
    list[str] | None, typer.Option("--metrics", "-m", help="metric names, comma-separated or repeated")
]


def open_client(url: str | None, token: str | None, db: str | None, *, create: bool = False) -> Client:
    """A server client when a URL is given (or EOS_URL is set), else the embedded store: an SQLite file
    that does not exist is created only when `create` (submit), and refused otherwise (every read)."""
    if url and db:
        raise InputError("--db names the embedded store and --url a server: give one of them")
    return Client(url, token) if url else Client.local(db, create=create)


@contextmanager
def connected(url: str | None, token: str | None, db: str | None, *, create: bool = False) -> Iterator[Client]:
    """The client for a command; any EosError ends the command with its message and exit code."""
    try:
        with open_client(url, token, db, create=create) as client:
            yield client
    except EosError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None


def _metrics(items: Sequence[str] | None) -> list[str] | None:
    names = [n.strip() for item in items or [] for n in item.split(",") if n.strip()]
    return names or None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def _rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "params": r.params, "status": _status(r), "summary": r.summary, "failure": r.failure} for r in runs
    ]


def _status(run: Run) -> str:
    """'queued (gpu: no worker)' for a run waiting on a queue that no live worker serves."""
    if run.status == "queued" and run.queue_served is False:
        return f"queued ({run.queue}: no worker)"
    return run.status


def print_runs(rows: Sequence[dict[str, Any]], title: str, console: Console) -> None:
    """eos_cli.summary's runs table, without vertical rules so that it fits an 80-column terminal, then
    why each failed or diverged run did not complete."""
    table = runs_table(rows, title)
    table.box, table.padding, table.show_edge = box.SIMPLE_HEAD, (0, 0), False  # one space between columns
    console.print(table)
    print_failures(rows, console)


def _print_final(runs: Sequence[Run], title: str) -> None:
    """The runs table; exit 1 unless every run completed."""
    print_runs(_rows(runs), title=escape(title), console=console)
    bad = [f"run {r.id} {r.status}" for r in runs if r.status != "completed"]
    if bad:
        err.print(f"[yellow]not completed:[/yellow] {', '.join(bad)}")
        raise typer.Exit(1)


def submit(
    spec: Annotated[Path, typer.Argument(help="the run spec, YAML or JSON", show_default=False)],
    sweep: Annotated[
        list[str] | None, typer.Option("--sweep", "-s", help="PATH=V1,V2,... e.g. optimizer.lr=0.1,1,10 (repeatable)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="experiment name (default: the spec's name)")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a label (repeatable)")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="follow the runs until they finish (exit 1 if one fails)")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print each run's estimated memory and work; submit nothing")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """Submit SPEC, or a grid over it, as an experiment.

    On a server the runs are queued for the workers (--wait follows them); on the embedded store they
    train now, in this process, with progress bars. A server refuses a run beyond its memory or work
    limit (422, naming both); --dry-run shows the estimates first."""
    if dry_run:
        _print_estimates(spec, sweep)
        return
    with connected(url, token, db, create=True) as client:
        experiment = client.submit(spec, sweep or None, name=name, tags=tag or ())
        console.print(f"experiment {experiment.id}: {len(experiment.run_ids)} run(s) on {escape(client.url)}")
        for warning in experiment.warnings:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        if not (wait or client.is_local):
            print_runs(_rows(experiment.runs or []), title=f"experiment {experiment.id}", console=console)
            console.print(f"follow them with: eos watch {experiment.id}")
            return
        _print_final(client.watch(experiment.runs or [], console=console), f"experiment {experiment.id}")


def _print_estimates(spec: Path, sweep: list[str] | None) -> None:
    """One row per run of the grid: its swept values, peak memory, work and parameters (eos_core.resources)."""
    from eos_client import load_spec, parse_sweep
    from eos_core.resources import estimate
    from eos_core.sweep import SweepError, expand_sweep

    try:
        cells = expand_sweep(load_spec(spec), parse_sweep(sweep))
    except (InputError, SweepError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    table = Table(title=f"{spec}: {len(cells)} run(s), estimated; nothing submitted")
    for column in ("run", "memory (GiB)", "work (TFLOP)", "parameters", "mostly"):
        table.add_column(column)
    for index, (params, cell) in enumerate(cells, start=1):
        cost = estimate(cell)
        largest = max(cost.parts, key=lambda k: cost.parts[k])
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items()) or str(index)
        table.add_row(label, f"{cost.memory_gib:.3g}", f"{cost.flops / 1e12:.3g}", f"{cost.parameters:,}", largest)
    console.print(table)


def _active_experiments(client: Client) -> list[int]:
    ids = [int(i) for s in ("running", "queued") for i in client.experiments(status=s, limit=500)["experiment"]]
    return sorted(set(ids))


def status(
    limit: Annotated[int, typer.Option(help="experiments to show, newest first")] = 10,
    owner: Annotated[str | None, typer.Option(help="only this user's experiments")] = None,
    active: Annotated[bool, typer.Option("--active", help="only experiments with queued or running runs")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """Recent experiments with their runs counted by status."""
    with connected(url, token, db) as client:
        console.print(_status_table(client, _recent(client, owner, limit, active)))
        if not client.is_local:
            console.print(_workers_line(client.workers()))


def _workers_line(found: dict[str, Any]) -> str:
    """'workers: cpu x2 (node-a, node-b); no worker serves gpu: runs routed there wait'."""
    names: dict[str, list[str]] = {}
    for worker in found.get("items", []):
        names.setdefault(worker["queue"], []).append(worker["host"])
    served = "; ".join(f"{q} x{len(h)} ({', '.join(sorted(set(h)))})" for q, h in sorted(names.items())) or "none"
    line = f"workers: {served}"
    if found.get("unserved"):
        line += f"; [yellow]no worker serves {', '.join(found['unserved'])}[/yellow]: runs routed there wait"
    return line


def _recent(client: Client, owner: str | None, limit: int, active: bool) -> pd.DataFrame:
    if not active:
        return client.experiments(owner=owner, limit=limit)
    found = [client.experiments(owner=owner, status=s, limit=limit) for s in ("running", "queued")]
    frame = pd.concat(found).drop_duplicates("experiment").sort_values("experiment", ascending=False)
    return frame.head(limit)


def _status_table(client: Client, experiments: pd.DataFrame) -> Table:
    table = Table(title=f"experiments on {escape(client.url)}")
    for column in ("id", "name", "owner", "created", "runs", "status"):
        table.add_column(column, justify="right" if column in ("id", "runs") else "left")
    for row in experiments.itertuples():
        statuses = [r.status for r in client.list_runs(int(row.experiment))]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES if s in statuses) or "-"
        created = row.created_at.strftime("%Y-%m-%d %H:%M")
        cells = (str(row.experiment), escape(str(row.name)), escape(str(row.owner)), created, str(len(statuses)))
        table.add_row(*cells, counts)
    return table


def watch(
    experiments: Annotated[
        list[int] | None, typer.Argument(help="experiment ids (default: all with queued or running runs)")
    ] = None,
    poll: Annotated[float | None, typer.Option(help="seconds between updates")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """Live progress bars until the runs finish, then their table; exit 1 if any did not complete.

    Without EXPERIMENTS, follows the queued and running runs. On the embedded store, queued runs train here."""
    with connected(url, token, db) as client:
        if experiments:
            runs = [r for e in experiments for r in client.list_runs(e)]
        else:
            runs = [r for e in _active_experiments(client) for r in client.list_runs(e, ["queued", "running"])]
        if not runs:
            console.print("nothing queued or running")
            return
        _print_final(client.watch(runs, poll=poll, console=console), "runs")


def runs(
    experiment: Annotated[int, typer.Argument(help="experiment id", show_default=False)],
    csv: Annotated[Path | None, typer.Option("--csv", help="also write the runs() table to this CSV file")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """The runs of an experiment, with their swept parameters and summaries."""
    with connected(url, token, db) as client:
        found = client.list_runs(experiment)
        print_runs(_rows(found), title=f"experiment {experiment}", console=console)
        if csv is not None:
            client.runs(experiment).to_csv(csv, index=False)
            console.print(f"wrote {csv}")


def trace(
    run: Annotated[int, typer.Argument(help="run id", show_default=False)],
    metrics: MetricsOption = None,
    max_points: Annotated[int, typer.Option(help="rows shown (downsampled; files get every step)")] = 20,
    csv: Annotated[Path | None, typer.Option("--csv", help="write the full trace as CSV")] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="write the full trace as Parquet")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """A run's trace: a downsampled table, or every recorded step to a CSV or Parquet file.

    Files hold all metrics unless --metrics is given; an empty CSV field is NaN."""
    with connected(url, token, db) as client:
        if csv is not None and parquet is not None:
            raise InputError("give --csv or --parquet, not both")
        target = csv or parquet
        if target is not None:
            client.export_trace(run, target, _metrics(metrics))
            console.print(f"wrote {target} ({target.stat().st_size} bytes)")
            return
        names = _metrics(metrics) or SHOWN_METRICS.split(",")
        frame = client.trace(run, names, max_points=max_points)
        table = Table(title=f"run {run} (bucket means over at most {max_points} points)")
        for column in ("step", *names):
            table.add_column(column, justify="right")
        for row in frame[["step", *names]].itertuples(index=False):
            table.add_row(*(_fmt(v) for v in row))
        console.print(table)


def compare(
    run_ids: RunsArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """Runs side by side: one column per run, one row per swept parameter and summary field."""
    with connected(url, token, db) as client:
        frame = client.compare(run_ids).runs.set_index("run")
        table = Table(title="compare")
        table.add_column("")
        for run_id in frame.index:
            table.add_column(f"run {run_id}", justify="right")
        for field in [c for c in frame.columns if c not in ("name",)]:
            table.add_row(field, *(_fmt(v) for v in frame[field]))
        console.print(table)
        for experiment_id in dict.fromkeys(int(e) for e in frame["experiment"]):
            console.print(_kappa_table(client.kappa(experiment_id), experiment_id))


def _kappa_table(frame: pd.DataFrame, experiment_id: int) -> Table:
    """κ_B per batch size, pooled over the experiment's analysed runs (eos_core/kappa.py)."""
    table = Table(
        title=f"κ_B of experiment {experiment_id}, per batch size",
        caption="upper: 5% quantile of η·L over the steps judged outside S (at most 5% of them lie below); "
        "lower: no step outside S, 95% quantile of η·L over the steps in S. Interval: 95%, order statistics.",
    )
    for column in ("B", "runs", "κ_B", "bound", "95% interval", "rows outside S", "rows in S"):
        table.add_column(column, justify="right")
    for row in frame.itertuples(index=False):
        high = "∞" if row.kappa_high is None or pd.isna(row.kappa_high) else _fmt(row.kappa_high)
        interval = f"[{_fmt(row.kappa_low)}, {high}]"
        table.add_row(
            str(row.batch_size),
            str(row.runs),
            _fmt(row.kappa_B),
            _fmt(row.kappa_B_bound),
            "-" if row.kappa_B is None or pd.isna(row.kappa_B) else interval,
            str(row.rows_outside),
            str(row.rows_in_S),
        )
    return table


def plot(
    run_ids: RunsArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="image file (.png, .pdf, .svg)", show_default=False)],
    max_points: Annotated[int, typer.Option(help="points per run (downsampled, spikes kept in the band)")] = 2000,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """Plot loss (log-log), drift and sharpness of the runs to an image file.

    Titled with the experiment and run ids; runs are labelled by their swept parameters; the drift has its
    standard-error band and the stability verdict shaded (green in S, light undecided); the dashed lines
    are 2/η."""
    with connected(url, token, db) as client:
        try:
            client.plot(run_ids, output, max_points=max_points)
        except (ValueError, OSError) as exc:  # an unknown image format, an unwritable path
            raise InputError(f"cannot write {output}: {exc}") from exc
        console.print(f"wrote {output}")


def cancel(
    run_ids: RunsArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    db: DbOption = None,
) -> None:
    """Cancel runs: a queued run at once, a running one at its next trace flush.

    Exit 1 if one had already finished."""
    code = 0
    with connected(url, token, db) as client:
        for run_id in run_ids:
            try:
                done = client.cancel(run_id)
            except EosError as exc:
                err.print(f"[red]error:[/red] run {run_id}: {escape(str(exc))}")
                code = code or exc.exit_code
                continue
            stopping = "" if done.finished else " (stops at its next flush)"
            console.print(f"run {run_id}: {'cancelled' if done.finished else 'cancel requested'}{stopping}")
    if code:
        raise typer.Exit(code)


COMMANDS = (submit, status, watch, runs, trace, compare, plot, cancel)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `eos` app, each with the exit codes in its --help."""
    for command in COMMANDS:
        app.command(epilog=EXIT_CODES)(command)


__all__ = ["COMMANDS", "register"]
