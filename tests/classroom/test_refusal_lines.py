"""The one-line wording of a refusal, a lost login and a failing server, without a server.

The class-server tests show the same lines from a real `mlflow server --app-name basic-auth`;
these pin the table of MLflow endpoints to verbs and the parsing of MLflow's error texts.
"""

from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException

from churnlab import store
from churnlab.errors import PermissionDenied, RegistryUnavailable


@pytest.fixture(autouse=True)
def student(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-never-shown")
    monkeypatch.setenv("CHURNLAB_EXPERIMENT", "churnlab-alice")


def refused(endpoint: str) -> MlflowException:
    return MlflowException(f"API request to endpoint {endpoint} failed with error code 403 != 200")


@pytest.mark.parametrize(
    ("endpoint", "line"),
    [
        ("/api/2.0/mlflow/registered-models/alias", "move an alias of churn-model-bob"),
        ("/api/2.0/mlflow/registered-models/get", "read churn-model-bob"),
        ("/api/2.0/mlflow/registered-models/set-tag", "write the history of churn-model-bob"),
        ("/api/2.0/mlflow/model-versions/create", "register a version of churn-model-bob"),
        ("/api/2.0/mlflow/model-versions/transition-stage", "move a stage of churn-model-bob"),
        (
            "/api/2.0/mlflow/model-versions/set-tag",
            "record evidence on a version of churn-model-bob",
        ),
        ("/api/2.0/mlflow/runs/create", "start a run in experiment churnlab-alice"),
        ("/api/2.0/mlflow/runs/log-batch", "log to a run of experiment churnlab-alice"),
        ("/api/2.0/mlflow/logged-models", "log a model to experiment churnlab-alice"),
        ("/api/2.0/mlflow/experiments/create", "create experiment churnlab-alice"),
        ("/api/3.0/mlflow/users/permissions/grant", "manage logins"),
    ],
)
def test_every_refused_endpoint_reads_as_who_may_not_do_what(endpoint, line):
    err = store.refusal(refused(endpoint), "churn-model-bob")
    assert isinstance(err, PermissionDenied) and err.exit_code == 4
    assert str(err) == f"permission denied: alice may not {line}"


def test_a_refused_artifact_upload_names_the_experiment():
    response = requests.Response()
    response.status_code = 403
    response.request = requests.Request(
        "PUT", "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/model.pkl"
    ).prepare()
    exc = requests.HTTPError("403 Client Error: FORBIDDEN", response=response)
    assert store.http_status(exc) == 403
    assert str(store.refusal(exc, "churn-model-bob")) == (
        "permission denied: alice may not upload artifacts to experiment churnlab-alice"
    )


def test_a_lost_login_and_a_failing_server_are_told_apart():
    gone = MlflowException(
        "User with username=alice not found", error_code="RESOURCE_DOES_NOT_EXIST"
    )
    err = store.failure(gone)
    assert isinstance(err, PermissionDenied)
    assert "wrong user name or password for alice, or the admin changed or removed" in str(err)
    for text in (
        "API request to http://127.0.0.1:5000/api/2.0/mlflow/registered-models/get failed with "
        "exception HTTPConnectionPool(...): Max retries exceeded with url: ... (Caused by "
        "ResponseError('too many 503 error responses'))",
        "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 500 != 200",
    ):
        err = store.failure(MlflowException(text))
        assert isinstance(err, RegistryUnavailable) and err.exit_code == 3
        assert str(err).startswith("the MLflow tracking server at http://127.0.0.1:5000 failed")
        assert "auth app" in str(err) and "\n" not in str(err)
    assert (
        store.failure(MlflowException("no such model", error_code="RESOURCE_DOES_NOT_EXIST"))
        is None
    )
