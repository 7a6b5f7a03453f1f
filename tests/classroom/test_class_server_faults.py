"""A class server whose auth app cannot use its database: at start, and while it runs.

`churnlab class-server` tries both databases before starting MLflow (which would otherwise
retry for minutes, tracebacks in its log): a database it cannot use is one line. A running
server whose auth database breaks answers 503 to every login check: each student command
says so in one line, exit 3.
"""

from __future__ import annotations

import sqlite3

import pytest
import requests
from support import cli, free_port, running_class_server

from churnlab import classroom, store

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("class-server")]

PASSWORD = "auth-db-pass-8231"  # in the database URI: must never be printed


def test_an_auth_database_the_server_cannot_use_is_one_line(tmp_path):
    folder = tmp_path / "server"
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = free_port()
    cases = [
        (  # nobody listens there
            f"postgresql+psycopg2://teacher:{PASSWORD}@127.0.0.1:{free_port()}/mlflow_auth",
            3,
            "churnlab: the class server cannot use its auth database (--auth-database-uri) "
            "postgresql+psycopg2://***@127.0.0.1:{port}/mlflow_auth: connection to server at "
            '"127.0.0.1", port {port} failed: Connection refused\n',
        ),
        (  # misspelled: no such database driver
            f"postgresq://teacher:{PASSWORD}@127.0.0.1/mlflow_auth",
            2,
            "churnlab: the auth database (--auth-database-uri) postgresq://***@127.0.0.1/"
            "mlflow_auth is not a database URI: Can't load plugin: sqlalchemy.dialects:postgresq\n",
        ),
    ]
    for uri, code, line in cases:
        done = cli(
            "class-server",
            "--folder",
            str(folder),
            "--port",
            str(port),
            "--backend-store-uri",
            registry,
            "--auth-database-uri",
            uri,
            env={k: "" for k in store.SERVER_VARIABLES},
            # it refuses in 2-10 s; 120 s means it hangs
            timeout=120,
        )
        assert (done.returncode, done.stdout) == (code, ""), done.stderr
        assert done.stderr == line.format(port=uri.rsplit(":", 1)[-1].split("/")[0])
        assert PASSWORD not in done.stderr
    with pytest.raises(requests.ConnectionError):  # no server was left behind
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_server_whose_auth_app_fails_is_one_line_exit_3(tmp_path):
    folder = tmp_path / "server"
    options = {"port": free_port(), "backend_store_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with running_class_server(folder, **options) as server:
        admin = requests.Session()
        admin.auth = classroom.admin_credentials(server.layout)
        new = {"username": "frank", "password": "frank-password-1234"}
        assert admin.post(f"{server.url}/api/2.0/mlflow/users/create", json=new).ok
        env = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": "frank",
            "MLFLOW_TRACKING_PASSWORD": new["password"],
        }
        # the auth database loses its users table (a broken migration, a dropped table)
        with sqlite3.connect(server.layout.auth / "basic_auth.db") as db:
            db.execute("ALTER TABLE users RENAME TO users_lost")
        for args in (("status",), ("train", "--rows", "300")):
            # it fails in 2-5 s; 120 s means it hangs
            done = cli("--model", "churn-model-frank", *args, env=env, timeout=120)
            assert (done.returncode, done.stdout) == (3, ""), done.stderr
            assert done.stderr == (
                f"churnlab: the MLflow tracking server at {server.url} failed with HTTP 503 "
                "(login frank): it is up, but its auth app or a database behind it is not "
                "working; tell whoever runs the server (its log says why)\n"
            )
            assert new["password"] not in done.stderr
