"""Bad input around a class's login, hand-in and grading: one line each, its documented exit
code, and nothing stored or half-written.

- a wrong password at ``churnlab login`` (exit 4): no credentials file, no config;
- a class server that is down (exit 3), for ``login`` and ``grade --server``;
- a login with no model of its own in the class (exit 4): nothing stored;
- ``grade --server`` without the admin's rights (exit 4), or with no server chosen (exit 2);
- ``churnlab handin`` on the embedded registry (exit 2): nothing to hand in to.

The ones that need the class server are slow; the others run in the fast tier, in process.
"""

from __future__ import annotations

import pytest
from support import free_port

from churnlab import classroom, cli


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A student's machine: its own HOME (``~/.mlflow/credentials``) and project config."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CHURNLAB_CONFIG", str(tmp_path / "churnlab.toml"))
    return tmp_path


def stored(machine) -> list[str]:
    """What a login left on the machine: its credentials file, its config."""
    return sorted(
        str(p.relative_to(machine))
        for p in (machine / "home" / ".mlflow" / "credentials", machine / "churnlab.toml")
        if p.exists()
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- no server needed
def test_a_server_that_is_down_is_exit_3_and_nothing_is_stored(machine, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-of-ana-4711")
    assert run(capsys, "login", url) == (
        3,
        "",
        f"churnlab: cannot reach the MLflow tracking server at {url} (ConnectionError)\n",
    )
    assert stored(machine) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    code, out, err = run(capsys, "grade", "--server")
    assert (code, out) == (3, "")
    assert err == f"churnlab: cannot reach the MLflow tracking server at {url} (ConnectionError)\n"


def test_a_hand_in_on_the_embedded_registry_is_refused(machine, monkeypatch, capsys):
    report = machine / "workbook.html"
    report.write_text("<html></html>")
    home = machine / "embedded"
    monkeypatch.setenv("CHURNLAB_HOME", str(home))
    assert run(capsys, "handin", str(report)) == (
        2,
        "",
        "churnlab: nothing to hand in to: the registry is the embedded store on this machine; "
        "`churnlab login URL` (your class server) first, then run the workbook there\n",
    )
    assert not home.exists(), "the refusal created the embedded store"


def test_grading_from_the_server_needs_a_server(machine, capsys):
    code, out, err = run(capsys, "grade", "--server")
    assert (code, out) == (2, "")
    assert err.startswith("churnlab: grade --server reads the class server, and none is chosen")
    assert run(capsys, "grade", "--html", "class.html", "reports/") == (
        2,
        "",
        "churnlab: --students and --html grade the class from its server: add --server\n",
    )
    assert run(capsys, "grade") == (
        2,
        "",
        "churnlab: grade needs workbook reports or folders of them (PATH...), or --server\n",
    )


# ---------------------------------------------------------------------------- on the class server
@pytest.fixture(scope="module")
def klass(class_server):
    class_server.add_students("username\neve\n")
    admin = class_server.admin()  # fay: a login the teacher made by hand, no model
    made = admin.post(
        f"{class_server.url}/api/2.0/mlflow/users/create",
        json={"username": "fay", "password": "fays-own-password-1"},
    )
    assert made.status_code == 200, made.text
    class_server.passwords["fay"] = "fays-own-password-1"
    return class_server


@pytest.mark.parametrize("user", ["eve", "nobody"])
@pytest.mark.slow
@pytest.mark.xdist_group("class-server")
def test_a_wrong_password_at_login_is_exit_4_and_nothing_is_stored(
    klass, machine, monkeypatch, capsys, user
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password-4711")
    assert run(capsys, "login", klass.url) == (
        4,
        "",
        f"churnlab: login refused by {klass.url}: wrong user name or password for {user}; "
        "nothing was stored\n",
    )
    assert stored(machine) == []


@pytest.mark.slow
@pytest.mark.xdist_group("class-server")
def test_a_login_with_no_model_of_its_own_is_exit_4_and_nothing_is_stored(
    klass, machine, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "fay")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", klass.passwords["fay"])
    assert run(capsys, "login", klass.url) == (
        4,
        "",
        f"churnlab: fay may log in to {klass.url}, but the class has no model churn-model-fay: "
        "ask your teacher to add you (churnlab class-add-students); nothing was stored\n",
    )
    assert stored(machine) == []


@pytest.mark.slow
@pytest.mark.xdist_group("class-server")
def test_grading_without_admin_rights_is_exit_4_in_one_line(klass, machine, monkeypatch, capsys):
    """A student logged in with churnlab login, then one with MLflow's variables."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "eve")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", klass.passwords["eve"])
    code, out, _ = run(capsys, "login", klass.url)
    assert code == 0 and stored(machine) == ["churnlab.toml", "home/.mlflow/credentials"]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    line = (
        f"churnlab: permission denied: eve is not an admin of {klass.url}, and grade --server "
        "reads every student's model and hand-in: log in as the class's admin\n"
    )
    csv_file = machine / "class.csv"
    assert run(capsys, "grade", "--server", "--csv", str(csv_file)) == (4, "", line)
    assert run(capsys, "logout")[0] == 0 and stored(machine) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", klass.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "eve")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", klass.passwords["eve"])
    assert run(capsys, "grade", "--server", "--csv", str(csv_file)) == (4, "", line)
    assert not csv_file.exists()


@pytest.mark.slow
@pytest.mark.xdist_group("class-server")
def test_the_admin_grades_every_login_of_the_class_but_the_admins(klass, machine, monkeypatch):
    from churnlab import class_grades

    user, password = classroom.admin_credentials(classroom.Layout(klass.folder))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", klass.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    assert class_grades.teacher() == user
    logins = class_grades.class_logins()
    assert {"eve", "fay"} <= set(logins) and user not in logins
    row = class_grades.grade_student("fay", logins)
    assert row.tasks_done == 0 and row.flags == [
        "no hand-in in churnlab-fay",
        "no model churn-model-fay on the server (churnlab class-add-students adds it)",
    ]
