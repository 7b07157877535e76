"""The client against a real `eos serve` (a subprocess) over PostgreSQL: errors, and the same frames as locally.

No worker listens on the test server's broker; the test trains the submitted runs itself with the
worker's task body, against the server's database.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from eos_cli.main import app
from eos_client import AuthError, Client, Conflict, NotFound, ServerUnreachable, ValidationFailed
from eos_core import RunSpec, train
from worker.runner import execute_run

from .conftest import Remote
from .support import free_port, tiny_spec


def test_a_bad_or_missing_token_is_an_auth_error(remote: Remote) -> None:
    for token in ("eos_not-a-token", None):
        with Client(remote.server.url, token) as client, pytest.raises(AuthError, match="EOS_TOKEN") as caught:
            client.experiments()
        assert caught.value.status == 401 and caught.value.exit_code == 4


def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "token") as client, pytest.raises(ServerUnreachable, match=f"cannot reach .*{url}") as caught:
        client.experiments()
    assert caught.value.status is None and caught.value.exit_code == 5


def test_invalid_spec_names_the_field(remote: Remote) -> None:
    with remote.client() as client, pytest.raises(ValidationFailed, match=r"optimizer\.lr: .*positive") as caught:
        client.submit(tiny_spec(lr=0.0))
    assert caught.value.status == 422 and caught.value.fields == ["optimizer.lr"]
    assert caught.value.detail[0]["loc"] == ["body", "spec", "optimizer", "lr"]


def test_unknown_run_and_experiment_are_not_found(remote: Remote) -> None:
    with remote.client() as client:
        with pytest.raises(NotFound, match="999999") as caught:
            client.run(999_999)
        assert caught.value.status == 404
        with pytest.raises(NotFound):
            client.runs(999_999)


def test_submit_train_and_read_back_over_http(remote: Remote) -> None:
    with remote.client() as client:
        experiment = client.submit(tiny_spec(), sweep=["optimizer.lr=0.5,2"])
        assert [r.status for r in experiment.runs or []] == ["queued", "queued"]
        for run_id in experiment.run_ids:
            assert execute_run(run_id, remote.sessions) == "completed"
        runs = client.wait(experiment, progress=False, timeout=30)
        assert list(runs["optimizer.lr"]) == [0.5, 2.0] and set(runs["status"]) == {"completed"}
        run_id = experiment.run_ids[0]
        expected = train(RunSpec.model_validate(client.run(run_id).spec)).trace
        frame = client.trace(run_id, ["loss", "stable_p"])
        np.testing.assert_array_equal(frame["loss"].to_numpy(), expected["loss"])
        np.testing.assert_array_equal(frame["stable_p"].to_numpy(), expected["stable_p"])
        assert len(client.trace(experiment, "loss", max_points=5)) <= 10
        assert "attempt" in set(client.events(run_id)["kind"])
        assert list(client.compare(experiment).runs["optimizer.lr"]) == [0.5, 2.0]
        with pytest.raises(Conflict):
            client.cancel(run_id)


def test_only_the_owner_cancels(remote: Remote) -> None:
    with remote.client("alice") as alice, remote.client("bob") as bob:
        run_id = alice.submit(tiny_spec()).run_ids[0]
        with pytest.raises(AuthError, match="another user") as caught:
            bob.cancel(run_id)
        assert caught.value.status == 403
        assert alice.cancel(run_id).status == "cancelled"


def test_cli_against_the_server(remote: Remote) -> None:
    runner = CliRunner()
    url, token = remote.server.url, remote.tokens["alice"]
    experiments = runner.invoke(app, ["status", "--url", url, "--token", token])
    assert experiments.exit_code == 0, experiments.output
    assert "alice" in experiments.stdout
    bad = runner.invoke(app, ["status", "--url", url, "--token", "eos_wrong"])
    assert bad.exit_code == 4 and "EOS_TOKEN" in bad.stderr
    gone = runner.invoke(app, ["status"], env={"EOS_URL": f"http://127.0.0.1:{free_port()}", "EOS_TOKEN": token})
    assert gone.exit_code == 5 and "cannot reach" in gone.stderr
    missing = runner.invoke(app, ["runs", "999999", "--url", url, "--token", token])
    assert missing.exit_code == 3


def test_a_failed_run_is_explained_over_http(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.runner

    from .support import FAILURE, failing_train

    monkeypatch.setattr(worker.runner, "train_slice", failing_train(20))
    with remote.client() as client:
        experiment = client.submit(tiny_spec(), name="fails on the worker")
        (run_id,) = experiment.run_ids
        assert execute_run(run_id, remote.sessions) == "failed"
        run = client.run(run_id)
        frame = client.runs(experiment)
    assert run.error == FAILURE and 20 <= run.step < 60
    assert run.failure == f"failed at step {run.step} of 60: {FAILURE}"
    assert list(frame["error"]) == [FAILURE] and list(frame["step"]) == [run.step]
    env = {"EOS_URL": remote.server.url, "EOS_TOKEN": remote.tokens["alice"]}
    shown = CliRunner().invoke(app, ["runs", str(experiment.id)], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"run {run_id} failed at step {run.step} of 60: {FAILURE}" in " ".join(shown.stdout.split())
