"""The dashboard: four public HTML pages and their static assets, served by the API at `/`.

    /                   experiments (filters, paging, which have active runs)
    /experiments/{id}   the sweep as a status grid and a heatmap of a summary field, the runs
    /runs/{id}          loss (log-log, with the C/(eta t) guide), drift (s.e. band, stable steps
                        shaded), sharpness and batch sharpness against 2/eta, the events
    /compare?runs=1,2   runs overlaid on one metric, their summaries side by side

The pages hold no data and need no login: their scripts call the REST API under /api/v1 with the
bearer token the user typed into the page's sign-in box (kept in localStorage and sent only in the
Authorization header; a `?token=` in the address is dropped, never used, as the access log records URLs), and
poll every few seconds while a run they show is queued or running. No build step: plain HTML,
JavaScript modules, and uPlot (MIT, static/vendor/) for the plots.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages"
STATIC = HERE / "static"

# The scripts are ours and same-origin; no inline script, no third-party origin. uPlot styles
# its elements through the CSSOM, which style-src does not restrict.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the pages' addresses (ids, filters) stay on the page
    "Cache-Control": "no-cache",  # revalidate (ETag): a redeployed dashboard is picked up at once
}
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(PAGES / f"{name}.html", media_type=MEDIA_TYPES[".html"], headers=SECURITY_HEADERS)


@router.get("/")
def experiments_page() -> FileResponse:
    return _page("experiments")


@router.get("/experiments/{experiment_id}")
def experiment_page(experiment_id: int) -> FileResponse:
    return _page("experiment")


@router.get("/runs/{run_id}")
def run_page(run_id: int) -> FileResponse:
    return _page("run")


@router.get("/compare")
def compare_page() -> FileResponse:
    return _page("compare")


def static_file(path: str) -> Path:
    """The file under STATIC that `path` names; 404 for anything else (no escaping the folder)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard asset {path!r}")
    return target


@router.get("/static/{path:path}")
def asset(path: str) -> FileResponse:
    target = static_file(path)
    media_type = MEDIA_TYPES.get(target.suffix, "application/octet-stream")
    return FileResponse(target, media_type=media_type, headers=SECURITY_HEADERS)
