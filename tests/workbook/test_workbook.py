"""``churnlab workbook``: the five notebooks run headless, the story they tell, the report.

The whole workbook runs once per session (tests/support.py) as the real console
script on a fresh registry; the tests read what it wrote. A second, short run fails on
purpose to show how the runner stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import nbformat
import pytest
import requests
import support
from support import main, run_cli

from churnlab import exercises, four_eyes, report, retention, runner, store, tables, workbook
from churnlab.errors import InputError
from churnlab.kernel import NotebookFailed, SharedKernel
from churnlab.registry import PRODUCTION, STAGING, Registry

#: one worker (--dist loadgroup) runs the tests that read the session's one workbook run
pytestmark = pytest.mark.xdist_group("workbook")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return support.default_run(tmp_path_factory)


@pytest.fixture
def story(run, monkeypatch):
    """The registry the default run wrote, opened in this test."""
    monkeypatch.setenv("CHURNLAB_HOME", str(run.registry_home))
    store.configure()
    return Registry()


def code_cells(path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


# ---------------------------------------------------------------------------- parsing and refusals
@pytest.mark.parametrize(
    ("text", "value"),
    [("0.9", 0.9), ("3", 3), ("False", False), ("None", None), ("logreg", "logreg"), ("", "")],
)
def test_parameter_values_are_read_like_papermill(text, value):
    assert runner.parse_value(text) == value
    assert type(runner.parse_value(text)) is type(value)


def test_only_accepts_numbers_and_names_and_keeps_the_order():
    assert runner.select("03,1,02_gate") == ["01_train", "02_gate", "03_staging"]
    assert runner.select(None) == list(runner.NOTEBOOKS)
    with pytest.raises(InputError, match="--only takes notebook numbers"):
        runner.select("06")


def test_parameters_are_checked_against_the_notebooks_that_run():
    declared = {
        n: runner.declared_parameters(runner.notebooks_dir() / f"{n}.ipynb")
        for n in ("01_train", "02_gate")
    }
    runner.check_parameters({"accuracy_threshold": 0.9, "rows": 500}, declared)
    with pytest.raises(InputError, match="unknown parameter 'walkthrough'"):
        runner.check_parameters({"walkthrough": False}, declared)  # 04/05 only
    with pytest.raises(InputError, match="accuracy_threshold takes a float"):
        runner.check_parameters({"accuracy_threshold": "high"}, declared)


def test_every_notebook_declares_its_parameters_in_a_tagged_cell():
    for name in runner.NOTEBOOKS:
        nb = nbformat.read(runner.notebooks_dir() / f"{name}.ipynb", as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert "Next" in nb.cells[-1].source or name == "05_verify"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "07"], "--only takes notebook numbers"),
        (["-p", "no_such_thing", "1"], "unknown parameter 'no_such_thing'"),
        (["-p", "accuracy_threshold", "high"], "accuracy_threshold takes a float"),
        (["--update-notebooks", "-p", "rows", "10"], "--update-notebooks runs the defaults"),
    ],
)
def test_user_errors_get_one_line_and_exit_2(tmp_path, args, message):
    done = main("workbook", "--output", str(tmp_path / "reports"), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert not (tmp_path / "reports" / "workbook.html").exists()


# ---------------------------------------------------------------------------- the default run
@pytest.mark.slow
def test_runner_prints_one_line_per_notebook_and_nothing_on_stderr(run):
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == "", "no MLflow INFO lines, warnings or progress bars"
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith(
        "churnlab workbook: 5 notebook(s) against the fresh embedded registry"
    )
    assert re.fullmatch(r"\s+kernel\s+ready\s+\d+\.\d s", lines[1]), "one kernel, started once"
    for name, line in zip(runner.NOTEBOOKS, lines[2:7], strict=True):
        assert re.fullmatch(rf"\s+{name}\s+ok\s+\d+\.\d s", line), line
    assert re.fullmatch(r"report: .*workbook\.html \(\d+\.\d s in all\)", lines[7])
    assert len(lines) == 8


@pytest.mark.slow
def test_executed_notebooks_carry_their_outputs_and_no_errors(run):
    for name in runner.NOTEBOOKS:
        nb = nbformat.read(run.executed / f"{name}.ipynb", as_version=4)
        assert "papermill" in nb.metadata, "papermill ran it"
        assert nb.metadata["papermill"]["parameters"] == {}, "the defaults: nothing injected"
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert outputs and not [o for o in outputs if o.output_type == "error"]
        assert not [o for o in outputs if o.get("name") == "stderr"], name
        texts = [o.get("data", {}).get("text/plain", "") for o in outputs]
        assert not [t for t in texts if re.search(r" at 0x[0-9a-f]+>", t)], "no memory addresses"


@pytest.mark.slow
def test_the_story_on_a_fresh_registry(story):
    versions = tables.versions_table(story)
    assert list(versions.index) == [1, 2, 3, 4, 5]
    # v1: the weak baseline fails the gate and stays registered, never staged
    assert versions.loc[1, "gate"] == "failed" and versions.loc[1, "holds"] == "-"
    assert 1 not in workbook.ever_held(story)
    # v2 passed gate and smoke check and went to production first
    assert story.verdicts(2) == {"gate": "passed", "smoke": "passed"}
    # v3 is the student's own (the teacher's edition solves the tasks): it holds production
    assert exercises.own_versions(story) == [3]
    assert story.holder(PRODUCTION) == 3
    assert story.verdicts(3) == {"gate": "passed", "smoke": "passed"}
    # v4 (retrained) went to production by override, was rolled back, then staged properly
    assert story.holder(STAGING) == 4
    assert story.verdicts(4) == {"gate": "passed", "smoke": "passed"}
    # v5 (what main built) is the newest and was never gated nor staged
    assert versions.loc[5, "gate"] == "pending" and 5 not in workbook.ever_held(story)
    moves = [(e.action, e.alias, e.from_version, e.to_version, e.override) for e in story.history()]
    assert moves == [
        ("stage", "staging", None, 2, False),  # 03's walkthrough
        ("stage", "staging", 2, 3, False),  # 03's Task 2
        ("promote", "production", None, 2, False),  # 04's walkthrough
        ("promote", "production", 2, 4, True),
        ("rollback", "production", 4, 2, False),
        ("stage", "staging", 3, 4, False),
        ("promote", "production", 2, 3, False),  # 04's Task 3
        ("rollback", "production", 3, 2, False),
        ("promote", "production", 2, 3, False),
    ]
    override = story.history()[3]
    assert override.reason and override.actor == "pytest"
    assert story.status()["consistent"]
    # 04's four eyes: one approval of v4 by a second person, no move (the history above)
    assert [(a.actor, a.version) for a in story.approvals()] == [("reviewer", 4)]
    assert [r["action"] for r in story.timeline()].count("approve") == 1


@pytest.mark.slow
def test_promotion_log_line_and_refusals_are_in_the_notebooks(run):
    text = (run.executed / "04_promote.ipynb").read_text()
    assert "Promoted churn-model v2 -> Production" in text
    assert (
        "refused: churn-model v4 -> Production: smoke is none (needs passed); pass "
        'override=True, reason=\\"why\\" to force' in text
    ), "a refusal in a notebook is worded in Python terms"
    assert "Promoted churn-model v4 -> Production (archived v2) [override: " in text
    assert "Rolled back churn-model v2 -> Production (archived v4)" in text
    assert "Promoted churn-model v3 -> Production (archived v2)" in text  # Task 3
    assert (
        "refused: churn-model v1 -> Staging: gate is failed"
        in (run.executed / "02_gate.ipynb").read_text()
    )


def _stdout(path, needle: str) -> str:
    """The printed output of the one code cell whose source contains ``needle``."""
    [cell] = [c for c in code_cells(path) if needle in c.source]
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_04_production_follows_the_alias_and_four_eyes_refuses_then_records(run):
    path = run.executed / "04_promote.ipynb"
    follow = ("alias_version", "following", "model_version", "reason")
    started = json.loads(_stdout(path, "following.start_following("))
    assert list(started) == list(follow), "only the fields two runs share"
    assert started == {"alias_version": 2, "following": True, "model_version": 2, "reason": None}
    after_override = json.loads(_stdout(path, "wait_until_serving(production_backend, hotfix)"))
    assert after_override["model_version"] == after_override["alias_version"] == 4
    [switches] = [
        o.data["text/plain"]
        for c in code_cells(path)
        if "switches_table" in c.source
        for o in c.outputs
        if o.output_type == "display_data"
    ]
    assert switches.split() == "from to trigger 0 v2 v4 poll 1 v4 v2 poll".split()
    eyes = _stdout(path, "four_eyes.demonstrate(")
    assert "refused: churn-model v4 -> Production: needs 1 approval(s) of v4" in eyes
    assert "refused: pytest may not approve churn-model v4: pytest registered it" in eyes
    assert "approved v4 for production by reviewer" in eyes


@pytest.mark.slow
def test_05_lists_the_customers_most_at_risk_as_production_scores_them(run, story):
    path = run.executed / "05_verify.ipynb"
    printed = _stdout(path, "retention.top_at_risk(")
    again = retention.top_at_risk(story, PRODUCTION, retention.new_customers(10_000), n=100)
    assert printed.strip() == again.summary()
    assert again.version == 3 and again.scored == 10_000 and len(again.customers) == 100
    found = again.customers["churn_probability"]
    assert found.is_monotonic_decreasing and again.customers["customerID"].is_unique


def test_acting_as_declares_another_person_and_restores_the_one_before(monkeypatch):
    from churnlab.registry import actor

    monkeypatch.setenv("CHURNLAB_ACTOR", "alice")
    with four_eyes.acting_as(" carol ") as person:
        assert person == actor() == "carol"
    assert actor() == "alice"
    monkeypatch.delenv("CHURNLAB_ACTOR")
    with pytest.raises(RuntimeError), four_eyes.acting_as("carol"):
        raise RuntimeError("restored on the way out too")
    assert "CHURNLAB_ACTOR" not in os.environ
    with pytest.raises(InputError, match="name must be"), four_eyes.acting_as("  "):
        pass


@pytest.mark.slow
def test_05_records_both_health_answers_serving_different_versions(run, story):
    health = report.health_answers(run.executed / "05_verify.ipynb")
    assert set(health) == {STAGING, PRODUCTION}
    for stage, answer in health.items():
        assert answer["stage"] == stage and answer["status"] == "ok"
        assert answer["model_version"] == story.holder(stage)
        assert answer["run_id"] == story.version(story.holder(stage)).run_id
    assert health[STAGING]["model_version"] != health[PRODUCTION]["model_version"]
    assert story.latest_version() not in {a["model_version"] for a in health.values()}


@pytest.mark.slow
def test_report_is_one_self_contained_file(run):
    page = run.report.read_text()
    assert report.network_references(page) == []
    loads = re.findall(
        r"""<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)=["']?(https?:)?//""", page
    )
    assert loads == []
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts == ['<script type="application/json" id="churnlab-work">'], "data, no code"
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    outputs = [
        o
        for n in runner.NOTEBOOKS
        for c in code_cells(run.executed / f"{n}.ipynb")
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == len(outputs) >= 8  # ROC and confusion x2, gate x2, timeline, drift


@pytest.mark.slow
def test_report_folds_every_code_cell_and_has_every_section(run):
    page = run.report.read_text()
    cells = sum(len(code_cells(run.executed / f"{n}.ipynb")) for n in runner.NOTEBOOKS)
    assert page.count('<details class="wb-code">') == cells
    assert page.count('<section id="nb-') == 5
    assert page.index('id="your-work"') < page.index('id="summary"')
    assert page.index('id="summary"') < page.index('id="nb-01_train"')


@pytest.mark.slow
def test_report_summary_is_read_from_the_registry(run, story):
    page = run.report.read_text()
    summary = page[page.index('id="summary"') : page.index('id="nb-01_train"')]
    for row in tables.versions_table(story).reset_index().itertuples():
        assert f"<td>{row.version}</td><td>{row.estimator}</td>" in summary
    assert summary.count("<tr>") >= 1 + 5 + 2 + 4 + len(story.history())
    assert 'class="wb-bad">failed<' in summary and 'class="wb-ok">passed<' in summary
    for stage in (STAGING, PRODUCTION):
        assert f"<td>{stage}</td><td>v{story.holder(stage)}</td>" in summary
    assert "&quot;model_version&quot;: 4" in summary and "&quot;model_version&quot;: 3" in summary


@pytest.mark.slow
def test_default_run_leaves_the_students_own_registry_alone(run):
    # workbook_support points CHURNLAB_HOME at <folder>/own-home: a fresh run never touches it
    assert not (run.folder / "own-home").exists()
    assert (run.registry_home / "mlflow.db").is_file()


# ---------------------------------------------------------------------------- failures and reuse
@pytest.mark.slow
def test_runner_stops_at_the_first_failing_notebook_and_keeps_the_good_report(run, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    good = run.report.read_bytes()
    (folder / "workbook.html").write_bytes(good)  # the last complete run's report
    out = support.run_workbook(
        folder,
        "--only",
        "01,02,03",
        "-p",
        "candidates",
        "baseline",
        "-p",
        "accuracy_threshold",
        "0.9",
        "-p",
        "rows",
        "2000",
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert re.fullmatch(
        r"churnlab: 03_staging failed in cell \d+ \(In \[\d+\] staged = workbook\.stage_next\(.*\)\): "
        r"OutOfOrder: 03_staging has nothing to stage: no version of churn-model passed the gate "
        r"since the last staging and staging is empty; .*; see .*03_staging\.ipynb\n",
        out.stderr,
    ), out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[2:5]] == [
        ["01_train", "ok"],
        ["02_gate", "ok"],
        ["03_staging", "FAILED"],
    ]
    assert re.fullmatch(r"partial report: .*workbook\.partial\.html \(\d+\.\d s in all\)", lines[5])
    assert re.fullmatch(r"the last complete report is kept: .*reports/workbook\.html", lines[6])
    assert (folder / "workbook.html").read_bytes() == good, "a failed run never replaces it"
    executed = sorted(p.name for p in out.executed.glob("*.ipynb"))
    assert executed == ["01_train.ipynb", "02_gate.ipynb", "03_staging.ipynb"]
    gate_nb = (out.executed / "02_gate.ipynb").read_text()
    assert "accuracy_threshold = 0.9" in gate_nb, "the parameter reached the notebook"
    page = (folder / "workbook.partial.html").read_text()
    assert 'class="wb-failure">Stopped: 03_staging failed in cell' in page
    assert (folder / "workbook.partial.json").is_file()
    assert report.network_references(page) == []


def _notebook(path, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["shared-kernel", "kernel-per-notebook"])
def test_a_notebook_never_sees_what_the_previous_one_left(tmp_path, shared):
    """Reusing one kernel keeps modules, never names, variables, folder or environment."""
    from papermill.exceptions import PapermillExecutionError

    first = _notebook(
        tmp_path / "a.ipynb",
        "import os\nimport mlflow\nleft_over = 41\nos.environ['WB_LEFT_OVER'] = '1'\n"
        "os.chdir('/')\nmlflow.set_tracking_uri('file:///nowhere')",
        "print(left_over + 1)",
    )
    second = _notebook(
        tmp_path / "b.ipynb",
        "import os, sys\nprint(os.environ.get('WB_LEFT_OVER'), os.getcwd() == sys.argv[0] or "
        "os.path.basename(os.getcwd()), 'mlflow' in sys.modules)",
        "print(left_over)",
    )
    with contextlib.ExitStack() as stack:
        kernel = stack.enter_context(SharedKernel(tmp_path)) if shared else None
        for source in (first, second):
            if kernel is not None:
                kernel.fresh()
            try:
                runner.run_notebook(source, source.with_suffix(".out.ipynb"), {}, kernel)
            except PapermillExecutionError as exc:
                failure = (source.name, exc.ename, exc.exec_count)
    assert failure == ("b.ipynb", "NameError", 2), "left_over is gone in the second notebook"
    done = code_cells(tmp_path / "a.out.ipynb")
    assert done[1].outputs[0]["text"] == "42\n"
    cells = code_cells(tmp_path / "b.out.ipynb")
    assert [c.execution_count for c in cells] == [1, 2], "counts start again at 1"
    environ, folder, imported = cells[0].outputs[0]["text"].split()
    assert environ == "None", "the environment the kernel started with"
    assert folder == tmp_path.name, "the notebook's folder, not where the last one went"
    assert imported == str(shared), "a reused kernel keeps its modules (the time saved)"


@pytest.mark.slow
def test_a_kernel_that_does_not_start_is_one_clear_failure(tmp_path):
    # 0.01 s: too short for any kernel to start, the failure is the subject
    with SharedKernel(tmp_path, timeout=0.01) as kernel:
        with pytest.raises(NotebookFailed, match=r"^the notebooks' kernel did not start: "):
            kernel.ready()
    assert not kernel.manager.has_kernel, "the kernel process was stopped"


@pytest.mark.slow
def test_reuse_registry_runs_against_the_students_own_store(trained_home, tmp_path):
    done = run_cli(
        "workbook",
        "--reuse-registry",
        "--only",
        "02",
        "-p",
        "your_turn",
        "False",  # a pipeline run, as in CI: no exercise on the student's store
        "--output",
        str(tmp_path / "reports"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "against the sqlite:///" in done.stdout.splitlines()[0]
    registry = Registry()  # the student's store: CHURNLAB_HOME of this test
    assert workbook.pending_versions(registry) == []
    assert not (tmp_path / "reports" / "registry").exists()


# ---------------------------------------------------------------------------- churnlab ui
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_mlflow_ui_on_loopback(trained_home):
    port = _free_port()
    exe = str(support.CHURNLAB)
    # churnlab ui turns MLflow's background job runner off (a huey consumer per job kind,
    # each a Python process importing MLflow): the UI's pages and API are the subject
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}
    process = subprocess.Popen(
        [exe, "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90  # the UI answers in 5-20 s; 90 s is a hang
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get",
                    params={"name": store.DEFAULT_MODEL_NAME},
                    timeout=10,  # local: milliseconds when up
                )
                break
            except requests.RequestException:  # not listening yet, or still starting
                time.sleep(0.5)  # (a poll's cost, not a bound)
        assert answer is not None, "the UI did not answer"
        assert answer.status_code == 200
        assert answer.json()["registered_model"]["name"] == store.DEFAULT_MODEL_NAME
    finally:
        import signal

        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)  # it stops in ~1 s after SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)  # SIGKILL: reaped at once
    first = process.stdout.read().splitlines()[0]
    assert first.startswith("MLflow UI for sqlite:///") and f"127.0.0.1:{port}" in first


@pytest.mark.slow
def test_ui_points_at_the_tracking_server_when_one_is_configured():
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://user:secret@127.0.0.1:{server.server_port}/"
        done = main("ui", env={"MLFLOW_TRACKING_URI": uri})
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout
    assert f"tracking server at http://***@127.0.0.1:{server.server_port}/" in done.stdout


@pytest.mark.slow
def test_ui_against_an_unreachable_server_fails_in_one_line():
    done = run_cli("ui", env={"MLFLOW_TRACKING_URI": "http://user:secret@127.0.0.1:9/"})
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "secret" not in done.stderr


def test_json_health_line_is_what_the_report_parses(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(...)")
    cell.metadata["tags"] = [report.HEALTH_TAG]
    answers = {"staging": {"model_version": 3}, "production": {"model_version": 2}}
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=json.dumps(answers))]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "05.ipynb")
    assert report.health_answers(tmp_path / "05.ipynb") == answers
    assert report.health_answers(tmp_path / "missing.ipynb") is None


def test_network_references_finds_loads_but_not_links():
    page = (
        '<a href="https://example.org/doc">prose link</a>'
        '<script src="https://cdn.example/require.js"></script>'
        '<img src="//cdn.example/x.png"><link rel="stylesheet" href="http://x/y.css">'
        "<style>/* https://in-a-comment */ .a { background: url('https://x/bg.png') }"
        "@import url(https://fonts.example/css);</style>"
        '<img src="data:image/png;base64,AAAA">'
    )
    found = report.network_references(page)
    assert len(found) == 5
    assert not [f for f in found if "example.org/doc" in f or "in-a-comment" in f]


@pytest.mark.slow
def test_the_console_script_is_this_environment(run):
    assert sys.executable  # the runner's kernels use this interpreter, not a python on PATH
    nb = nbformat.read(run.executed / "01_train.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def sanitize(text: str) -> str:
    """``text`` as nbval sees it with notebooks/nbval.cfg (nbval's own parser and order)."""
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((runner.notebooks_dir() / "nbval.cfg").read_text())
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize(
    "volatile",
    [
        "registry: sqlite:////tmp/pytest-of-root/pytest-1/home0/mlflow.db",
        '"run_id": "0b4c6b807e4b4fc6aadec035cf4c2efa"',
        "2026-11-26T21:15:28+00:00  student  stage",
        "latency_p95_ms: 21.91 ms (needs <= 50.0 ms) -> pass",
        "startup: 3.35 s (needs <= 60.0 s) -> pass",
        "http://127.0.0.1:41234/health",
        "see /home/me/churnlab/reports/executed/03_staging.ipynb",
    ],
)
def test_sanitizer_masks_what_differs_between_two_correct_runs(volatile):
    assert sanitize(volatile) != volatile
    assert not re.search(
        r"[0-9a-f]{32}|\d{4}-\d\d-\d\dT|\d+\.\d+ m?s\b|:\d{4,5}/|/tmp/|/home/", sanitize(volatile)
    )


@pytest.mark.parametrize(
    "compared",
    [
        "Gate failed: churn-model v1: accuracy 0.732538 (needs >= 0.75)",
        "Gate passed: churn-model v2 (11 checks)",
        "Promoted churn-model v3 -> Production (archived v2) [override: shipped early]",
        "predictions    pass    0    1e-09    max |served - in-process| over 1761 rows",
        "bad_input  pass  9/9  9/9",
        "v2: moderate drift: investigate. Features that moved (PSI): MonthlyCharges 0.215",
        "digest f5f8eaed22f9eb2c verified; 1761 customers; v2's evaluation snapshot",
        "memory: within the 1500.0 MB limit -> pass",
    ],
)
def test_sanitizer_leaves_metrics_versions_and_verdicts_compared(compared):
    assert sanitize(compared) == compared
