"""Every answer of the backend, byte for byte, as recorded in ``tests/backend/answers/``.

Three backends serve v1 of a copy of the template registry: by its ONNX graph, by its
scikit-learn pipeline, and by its graph while following the alias (webhook secret set).
Each gets every request of :data:`answers.REQUESTS` in-process; the status, every header
in order and the body must equal the recorded text, where only the run id and
``Server-Timing``'s milliseconds are masked. A change in how serving renders, refuses or
routes anything shows here, down to a space or a float's last digit.

After changing an answer on purpose, record them again and review the diff:
``CHURNLAB_RECORD_ANSWERS=1 pytest tests/backend/test_answers.py``.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path

import pytest
from answers import REQUESTS, written
from support import prove_parity, staged_copy

from churnlab import store
from serving.app import Settings, create_app

pytestmark = pytest.mark.xdist_group("answers")  # its module fixtures, one worker

RECORDED = Path(__file__).resolve().parent / "answers"
RECORD = os.environ.get("CHURNLAB_RECORD_ANSWERS") == "1"
BACKENDS = {
    # name: (serves the ONNX graph, follows the alias)
    "onnx": (True, False),
    "sklearn": (False, False),
    "following": (True, True),
}


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request, template_home, tmp_path_factory):
    """A TestClient on an app serving @staging = v1 as ``request.param`` says; its run id."""
    with warnings.catch_warnings():  # starlette's note about its httpx client
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    onnx, follow = BACKENDS[request.param]
    home = staged_copy(
        template_home,
        tmp_path_factory.mktemp(f"answers-{request.param}"),
        "answer tests",
        prepare=(lambda registry: prove_parity(registry, 1)) if onnx else None,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURNLAB_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.configure()
        settings = Settings(
            stage="staging", follow=follow, poll_interval_s=3600, webhook_secret="s3cret"
        )
        app = create_app(settings)
        with TestClient(app) as client:
            yield request.param, client, app.state.served.run_id


def test_every_answer_is_the_recorded_one(backend):
    name, client, run_id = backend
    texts = []
    for ask in REQUESTS:
        answer = client.request(
            ask.method,
            ask.path,
            headers=ask.headers,
            content=ask.body,
            follow_redirects=False,
        )
        texts.append(
            written(ask, answer.status_code, answer.headers.multi_items(), answer.content, run_id)
        )
    got = "".join(texts)
    path = RECORDED / f"{name}.txt"
    if RECORD:
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
    expected = path.read_text()
    if got != expected:
        diff = difflib.unified_diff(
            expected.splitlines(), got.splitlines(), "recorded", "now", lineterm="", n=1
        )
        pytest.fail(f"{name}: answers differ from {path.name}:\n" + "\n".join(list(diff)[:80]))
