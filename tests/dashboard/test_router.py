"""The dashboard router without a browser or a database: pages, assets, headers, and the app wiring."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from api import dashboard
from api.app import PREFIX, create_app
from api.settings import ApiSettings

PAGES = ["/", "/experiments/1", "/runs/1", "/compare", "/compare?runs=1,2&metric=sharpness"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(dashboard.router)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_public_html_with_a_strict_policy(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["referrer-policy"] == "no-referrer"  # a one-off ?token= stays on the page
    assert "<script" in response.text and "Authorization" not in response.text


def test_every_asset_a_page_or_module_names_exists(client: TestClient) -> None:
    names: set[str] = set()
    for path in PAGES[:4]:
        names.update(re.findall(r'(?:src|href)="(/static/[^"]+)"', client.get(path).text))
    modules = {p.name for p in dashboard.STATIC.glob("*.js")}
    for module in modules:
        text = (dashboard.STATIC / module).read_text()
        names.update(f"/static/{m}" for m in re.findall(r'from "\./([^"]+)"', text))
    assert "/static/vendor/uPlot.iife.min.js" in names
    for name in sorted(names):
        response = client.get(name)
        assert response.status_code == 200, name
        assert response.headers["x-content-type-options"] == "nosniff"
        if name.endswith(".js"):
            assert response.headers["content-type"].startswith("text/javascript")
    assert (dashboard.STATIC / "vendor" / "uPlot.LICENSE").read_text().startswith("The MIT License")


@pytest.mark.parametrize("path", ["../__init__.py", "../pages/run.html", "/etc/passwd", "vendor", "nothing.js"])
def test_assets_outside_the_static_folder_are_not_served(path: str) -> None:
    with pytest.raises(HTTPException) as caught:
        dashboard.static_file(path)
    assert caught.value.status_code == 404


def test_an_unknown_asset_is_a_404(client: TestClient) -> None:
    assert client.get("/static/nothing.js").status_code == 404
    assert client.get("/static/..%2f__init__.py").status_code == 404


def test_the_app_serves_the_dashboard_at_the_root_and_the_api_under_its_prefix() -> None:
    engine = create_engine("sqlite://")
    app = create_app(ApiSettings(), sessionmaker(bind=engine), enqueue=lambda _ids: None)
    client = TestClient(app)  # no lifespan: the schema check is not what this test is about
    for path in ["/", "/experiments/3", "/runs/7", "/compare?runs=1,2"]:
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), path
    assert client.get(f"{PREFIX}/health").json() == {"status": "ok"}
    assert client.get(f"{PREFIX}/runs/7").status_code == 401  # the data still needs a token
    assert not any(p.startswith("/static") or p == "/" for p in app.openapi()["paths"])  # pages stay out of the schema
    engine.dispose()
