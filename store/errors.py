"""The store's exceptions; the API maps them to status codes (api/errors.py)."""

from __future__ import annotations


class NotFound(LookupError):
    """No such row; the message names what was looked for."""


class Conflict(RuntimeError):
    """The request conflicts with the row's state (cancelling a finished run, ...)."""


class QuotaExceeded(RuntimeError):
    """The user would exceed a limit (queued runs)."""


class IllegalTransition(Conflict):
    """A run was asked to move along an edge the lifecycle does not have (a finished run is final)."""


class LostOwnership(RuntimeError):
    """This attempt no longer owns the run (the reaper requeued it, another worker claimed it):
    it must stop writing at once."""
