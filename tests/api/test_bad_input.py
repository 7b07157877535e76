"""Input that once gave a 500 or an undocumented answer (issue 9, found by schemathesis): each is now a 4xx
that names the problem and changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Api, small_spec

EXPERIMENTS = "/api/v1/experiments"
JSON = {"Content-Type": "application/json"}
TOO_BIG = "99999999999999999999"  # beyond 2^63 - 1


@pytest.fixture
def unchanged(api: Api) -> Iterator[None]:
    """The test's requests must leave every table as it was, and send nothing to the broker."""
    before = api.counts()
    yield
    assert api.counts() == before
    assert api.enqueued == []


def refused(response: Any, loc: list[Any], code: int = 422) -> dict[str, Any]:
    """The response's one field error, located at `loc`; the body must be strict UTF-8 JSON."""
    assert response.status_code == code, response.text
    body = json.loads(response.content.decode("utf-8"))
    (error,) = body["detail"]
    assert error["loc"] == loc, error
    result: dict[str, Any] = error
    return result


def post_raw(api: Api, body: str | bytes) -> Any:
    return api.post(EXPERIMENTS, content=body.encode() if isinstance(body, str) else body, headers=JSON)


@pytest.mark.usefixtures("unchanged")
class TestIntegersInRange:
    @pytest.mark.parametrize("steps", [2**31, 10**12])
    def test_steps_beyond_the_column(self, api: Api, steps: int) -> None:
        error = refused(
            api.post(EXPERIMENTS, json={"spec": small_spec(steps=steps)}), ["body", "spec", "optimizer", "steps"]
        )
        assert error["msg"] == "Input should be less than or equal to 2147483647"

    def test_swept_steps_beyond_the_column(self, api: Api) -> None:
        body = {"spec": small_spec(), "sweep": {"optimizer.steps": [10, 2**31]}}
        refused(api.post(EXPERIMENTS, json=body), ["body", "sweep", "optimizer.steps"])

    @pytest.mark.parametrize("seed", [-1, 2**32])
    def test_seed_within_what_the_generators_take(self, api: Api, seed: int) -> None:
        refused(api.post(EXPERIMENTS, json={"spec": {**small_spec(), "seed": seed}}), ["body", "spec", "seed"])

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/v1/runs/{}"),
            ("GET", "/api/v1/runs/{}/events"),
            ("GET", "/api/v1/runs/{}/trace"),
            ("POST", "/api/v1/runs/{}/cancel"),
            ("DELETE", "/api/v1/runs/{}"),
        ],
    )
    def test_run_id_beyond_bigint(self, api: Api, method: str, path: str) -> None:
        error = refused(api.client.request(method, path.format(TOO_BIG), headers=api.auth()), ["path", "run_id"])
        assert error["msg"] == "Input should be less than or equal to 9223372036854775807"
        refused(api.client.request(method, path.format(0), headers=api.auth()), ["path", "run_id"])

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/v1/experiments/{}"),
            ("GET", "/api/v1/experiments/{}/kappa"),
            ("DELETE", "/api/v1/experiments/{}"),
        ],
    )
    def test_experiment_id_beyond_bigint(self, api: Api, method: str, path: str) -> None:
        refused(api.client.request(method, path.format(TOO_BIG), headers=api.auth()), ["path", "experiment_id"])

    def test_experiment_id_query(self, api: Api) -> None:
        response = api.get("/api/v1/runs", params={"experiment_id": "-19138661998429080649728"})
        refused(response, ["query", "experiment_id"])

    def test_offset(self, api: Api) -> None:
        error = refused(api.get(EXPERIMENTS, params={"offset": TOO_BIG}), ["query", "offset"])
        assert "9223372036854775807" in error["msg"]

    @pytest.mark.parametrize("url", ["/api/v1/runs/1/trace", "/api/v1/compare"])
    @pytest.mark.parametrize("name", ["start", "end"])
    def test_trace_steps(self, api: Api, url: str, name: str) -> None:
        refused(api.get(url, params={"runs": "1", name: 2**31}), ["query", name])

    def test_compare_ids(self, api: Api) -> None:
        error = refused(api.get("/api/v1/compare", params={"runs": f"1,{TOO_BIG}"}), ["query", "runs"])
        assert TOO_BIG in error["msg"]
        refused(api.get("/api/v1/compare", params={"runs": "0"}), ["query", "runs"])


@pytest.mark.usefixtures("unchanged")
class TestTextThatCannotBeStored:
    @pytest.mark.parametrize(
        ("body", "loc"),
        [
            ({"spec": small_spec(), "tags": ["ok", "a\x00b"]}, ["body", "tags", 1]),
            ({"spec": small_spec(), "name": "a\x00b"}, ["body", "name"]),
            ({"spec": {**small_spec(), "name": "a\x00b"}}, ["body", "spec", "name"]),
            ({"spec": small_spec(), "sweep": {"name": ["a", "b\x00"]}}, ["body", "sweep", "name", 1]),
            ({"spec": {**small_spec(), "device\x00": "cpu"}}, ["body", "spec", "device\x00"]),
        ],
    )
    def test_nul(self, api: Api, body: dict[str, Any], loc: list[Any]) -> None:
        error = refused(api.post(EXPERIMENTS, json=body), loc)
        assert "NUL character" in error["msg"]

    @pytest.mark.parametrize(
        ("field", "value", "loc"),
        [
            ("name", '"\\ud800"', ["body", "name"]),
            ("tags", '["\\udfff x"]', ["body", "tags", 0]),
            ("spec", '{"name": "a\\ud800"}', ["body", "spec", "name"]),
            ("sweep", '{"name": ["\\ud800"]}', ["body", "sweep", "name", 0]),
        ],
    )
    def test_lone_surrogate(self, api: Api, field: str, value: str, loc: list[Any]) -> None:
        body = f'{{"spec": {value}}}' if field == "spec" else f'{{"spec": {{}}, "{field}": {value}}}'
        error = refused(post_raw(api, body), loc)
        assert "lone UTF-16 surrogate" in error["msg"]

    @pytest.mark.parametrize("parameter", ["name", "owner", "tag"])
    def test_nul_in_the_experiment_filters(self, api: Api, parameter: str) -> None:
        error = refused(api.get(EXPERIMENTS, params={parameter: "a\x00b"}), ["query", parameter])
        assert "NUL character" in error["msg"]

    def test_default_name_longer_than_the_column(self, api: Api) -> None:
        long = "x" * 201
        error = refused(api.post(EXPERIMENTS, json={"spec": {**small_spec(), "name": long}}), ["body", "spec", "name"])
        assert "201 characters" in error["msg"] and "give a shorter `name`" in error["msg"]


def test_a_long_spec_name_is_fine_with_an_experiment_name(api: Api) -> None:
    created = api.submit({**small_spec(), "name": "x" * 300}, name="short")
    assert created["name"] == "short"


@pytest.mark.usefixtures("unchanged")
class TestBodiesThatAreNotJson:
    @pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity"])
    def test_non_finite_numbers(self, api: Api, number: str) -> None:
        body = f'{{"spec": {{"dataset": {{"separation": {number}}}}}}}'
        error = refused(post_raw(api, body), ["body", "spec", "dataset", "separation"])
        assert error["type"] == "finite_number"

    def test_not_utf8(self, api: Api) -> None:
        error = refused(post_raw(api, b'{"spec": {"name": "\xff"}}'), ["body"])
        assert error["type"] == "json_invalid" and "not UTF-8" in error["msg"]

    def test_nested_too_deeply(self, api: Api) -> None:
        error = refused(post_raw(api, '{"spec": ' + "[" * 5000 + "]" * 5000 + "}"), ["body"])
        assert error["type"] == "json_invalid"


def test_the_400_is_gone_from_the_openapi_and_422_documented(api: Api) -> None:
    operation = api.client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/experiments"]["post"]
    assert "400" not in operation["responses"] and "422" in operation["responses"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/experiments", "GET, POST"),
        ("/api/v1/experiments/1", "GET, DELETE"),
        ("/api/v1/runs/1", "GET, DELETE"),
        ("/api/v1/runs/1/cancel", "POST"),
        ("/api/v1/compare", "GET"),
    ],
)
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
def test_allow_names_every_method_the_path_serves(api: Api, path: str, allowed: str, method: str) -> None:
    response = api.client.request(method, path, headers=api.auth())
    assert response.status_code == 405 and response.headers["allow"] == allowed
    assert response.json()["detail"] == f"{method} is not allowed on {path}; allowed: {allowed}"


def compare_parameter(api: Api, name: str) -> dict[str, Any]:
    operation = api.client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/compare"]["get"]
    (parameter,) = [p for p in operation["parameters"] if p["name"] == name]
    schema: dict[str, Any] = parameter["schema"]
    return schema


@pytest.mark.parametrize(
    "runs",
    ["", " ", ",", "1,", ",1", "1,,2", "0", "00", "-1", "1.0", "1;2", "١", "1_0", f"1,{TOO_BIG}", "1," * 50 + "1"],
)
def test_compare_runs_refused_exactly_where_the_schema_says(api: Api, runs: str) -> None:
    pattern = compare_parameter(api, "runs")["pattern"]
    assert re.fullmatch(pattern, runs) is None
    refused(api.get("/api/v1/compare", params={"runs": runs}), ["query", "runs"])


@pytest.mark.parametrize("runs", ["1", "01", " 1 , 2 ", "1,1", ",".join(["1"] * 50), "9223372036854775807"])
def test_compare_runs_accepted_where_the_schema_says(api: Api, runs: str) -> None:
    assert re.fullmatch(compare_parameter(api, "runs")["pattern"], runs)
    assert api.get("/api/v1/compare", params={"runs": runs}).status_code == 404  # valid, but no such run


@pytest.mark.parametrize("metrics", ["", "loss,", "loss,,drift", "los", "loss;drift", " loss\t"])
def test_metrics_refused_exactly_where_the_schema_says(api: Api, metrics: str) -> None:
    assert re.fullmatch(compare_parameter(api, "metrics")["pattern"], metrics) is None
    run = api.submit()["runs"][0]["id"]
    response = api.get(f"/api/v1/runs/{run}/trace", params={"metrics": metrics})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "metrics"]


def test_openapi_also_at_the_root(api: Api) -> None:
    assert api.client.get("/openapi.json").json() == api.client.get("/api/v1/openapi.json").json()


def test_security_scheme_names_the_command_that_exists(api: Api) -> None:
    schemes = api.client.get("/openapi.json").json()["components"]["securitySchemes"]
    (description,) = [scheme["description"] for scheme in schemes.values()]
    assert "`eos users create NAME`" in description and "`eos token create NAME`" in description
    assert "eos token`" not in description  # the old text named a bare `eos token`, which never existed
