"""Where a class's passwords must not be: the helpers of the secrets tests.

A password is looked for as text and as it travels in a Basic-auth header (:func:`forms`),
in every file under a folder (:func:`files_containing`) and in everything the server keeps
about models, versions and runs (:func:`registry_texts`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path

from support import remote_env

from churnlab import classroom


def forms(user: str, password: str) -> list[bytes]:
    """A password as text, and as it travels in a Basic auth header."""
    return [password.encode(), base64.b64encode(f"{user}:{password}".encode())]


def files_containing(folder: Path, needles: list[bytes], skip: tuple[Path, ...] = ()) -> list[str]:
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path not in skip:
            with contextlib.suppress(OSError):
                raw = path.read_bytes()
                hits += [str(path) for needle in needles if needle in raw]
    return hits


def registry_texts(klass) -> list[str]:
    """Every model's and version's tags (history, approvals, evidence), every run's tags and
    parameters and every dataset source, as the admin reads them."""
    from mlflow.tracking import MlflowClient

    user, password = classroom.admin_credentials(classroom.Layout(klass.folder))
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    creds = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    texts: list[str] = []
    with remote_env(klass.url, **creds), quiet[0], quiet[1]:
        client = MlflowClient()
        for model in client.search_registered_models():
            texts += [model.name, model.description or "", json.dumps(model.tags)]
            for mv in client.search_model_versions(f"name='{model.name}'"):
                full = client.get_model_version(mv.name, mv.version)
                texts += [full.source or "", json.dumps(full.tags)]
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                texts += [json.dumps(run.data.tags), json.dumps(run.data.params)]
                texts += [d.dataset.source for d in (run.inputs.dataset_inputs or [])]
    return texts
