"""The eos Python client: the same notebook code against a server or the embedded SQLite store.

    from eos_client import Client

    with Client.local() as client:                    # or Client("http://eos:8000", token), or Client()
        experiment = client.submit("examples/demo_fig4_small.yaml", sweep={"optimizer.lr": [1, 10, 100]})
        client.wait(experiment)
        runs = client.runs(experiment)                # one row per run: optimizer.lr, status, entrance_step, ...
        trace = client.trace(experiment, "loss,drift", max_points=2000)

Exit codes of the `eos` command for each error class (`EosError.exit_code`): 0 ok, 1 the thing asked
about failed (failed runs, a conflict, a quota), 2 bad input (422), 3 not found, 4 bad or missing token,
5 server unreachable or failing.
"""

from __future__ import annotations

from .client import Client, load_spec, parse_sweep
from .errors import (
    AuthError,
    Conflict,
    EosError,
    InputError,
    NotFound,
    QuotaExceeded,
    ServerError,
    ServerUnreachable,
    ValidationFailed,
    WaitTimeout,
)
from .frames import SUMMARY_FIELDS
from .models import Comparison, Experiment, Run

__all__ = [
    "SUMMARY_FIELDS",
    "AuthError",
    "Client",
    "Comparison",
    "Conflict",
    "EosError",
    "Experiment",
    "InputError",
    "NotFound",
    "QuotaExceeded",
    "Run",
    "ServerError",
    "ServerUnreachable",
    "ValidationFailed",
    "WaitTimeout",
    "load_spec",
    "parse_sweep",
]
