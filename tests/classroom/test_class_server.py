"""A class on one authenticated registry: identity, permissions, four eyes, out-of-band moves.

Three students on the real class server (`churnlab class-server`: basic-auth on PostgreSQL):
alice trains a candidate; bob gets a copy of it as his own v1; carol reviews alice's model
(EDIT on it, from the CSV's reviewer column). Every promotion needs one approval
(`class-add-students --approvals 1`). The tests run in file order on that one class.
"""

from __future__ import annotations

import contextlib
import io
import json
import stat
import time

import pytest
from leaks import files_containing, forms, registry_texts
from support import cli, remote_env

from churnlab import classroom, postgres, tags

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("class-server")]

ALICE, BOB, CAROL = "alice", "bob", "carol"


def ok(done, code: int = 0) -> str:
    assert done.returncode == code, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


@contextlib.contextmanager
def as_student(klass, user: str):
    """This process as ``user`` on the class server: a raw MLflow client, no churnlab rules."""
    from mlflow.tracking import MlflowClient

    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    creds = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": klass.passwords[user]}
    with remote_env(klass.url, **creds), quiet[0], quiet[1]:
        yield MlflowClient()


def state(klass, user: str) -> dict:
    """What a model's history, aliases and stages are, as its owner's client reads them."""
    with as_student(klass, user) as client:
        name = classroom.model_for(user)
        model = client.get_registered_model(name)
        return {
            "tags": dict(model.tags),
            "aliases": dict(model.aliases),
            "stages": {
                v.version: v.current_stage for v in client.search_model_versions(f"name='{name}'")
            },
        }


@pytest.fixture(scope="module")
def klass(class_server):
    done = class_server.add_students(
        f"username,reviewer\n{ALICE},{CAROL}\n{BOB},\n{CAROL},\n", "--approvals", "1"
    )
    assert done.stdout.splitlines()[0].split()[:2] == ["user", "one-time"]
    assert set(class_server.passwords) >= {ALICE, BOB, CAROL}
    train = json.loads(ok(class_server.churnlab(ALICE, "train", "--rows", "600")))
    assert train["model_version"] == 1
    with as_student(class_server, BOB) as client:  # bob's v1: a copy of alice's pipeline
        client.copy_model_version(
            f"models:/{classroom.model_for(ALICE)}/1", classroom.model_for(BOB)
        )
    return class_server


def test_a_student_owns_their_model_and_reads_the_others(klass):
    with as_student(klass, BOB) as client:
        alice_model = client.get_registered_model(classroom.model_for(ALICE))  # READ for all
        assert alice_model.tags[tags.REQUIRED_APPROVALS] == "1"
        version = client.get_model_version(classroom.model_for(ALICE), "1")
        assert version.tags[tags.REGISTERED_BY] == ALICE  # the login, not CHURNLAB_ACTOR
    history = ok(klass.churnlab(CAROL, "history", model=classroom.model_for(ALICE)))
    assert history.strip() == "no promotions yet"


def test_the_actor_is_the_login_even_with_churnlab_actor_set(klass):
    out = ok(klass.churnlab(ALICE, "stage", "1", "--override", "--reason", "first try"))
    assert out == "Staged churn-model-alice v1 -> Staging [override: first try]\n"
    (event,) = json.loads(ok(klass.churnlab(ALICE, "history", "--json")))
    assert (event["actor"], event["actor_source"]) == (ALICE, "server")
    assert "alice (login)" in ok(klass.churnlab(BOB, "history", model=classroom.model_for(ALICE)))


def test_promoting_another_students_model_is_refused_and_writes_nothing(klass):
    before = state(klass, BOB)
    done = klass.churnlab(
        ALICE, "promote", "1", "--override", "--reason", "hijack", model=classroom.model_for(BOB)
    )
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert (
        done.stderr
        == "churnlab: permission denied: alice may not move @production of churn-model-bob\n"
    )
    done = klass.churnlab(
        ALICE, "stage", "1", "--override", "--reason", "x", model="churn-model-bob"
    )
    assert done.returncode == 4
    assert "alice may not move @staging of churn-model-bob" in done.stderr
    done = klass.churnlab(CAROL, "approve", "1", "--reason", "x", model="churn-model-bob")
    assert done.returncode == 4 and "carol may not approve v1 of churn-model-bob" in done.stderr
    assert state(klass, BOB) == before  # no alias, stage, event or approval half-written


def test_self_approval_is_refused(klass):
    done = klass.churnlab(ALICE, "approve", "1", "--reason", "looks fine to me")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == (
        "churnlab: refused: alice may not approve churn-model-alice v1: alice registered it; "
        "an approval must come from someone else (four eyes)\n"
    )
    assert not any(k.startswith(tags.APPROVAL_PREFIX) for k in state(klass, ALICE)["tags"])


def test_a_promotion_needs_an_approval_by_someone_else(klass):
    with as_student(klass, ALICE) as client:  # the gate and smoke check are tested elsewhere
        for key in (tags.GATE_VERDICT, tags.SMOKE_VERDICT):
            client.set_model_version_tag(classroom.model_for(ALICE), "1", key, "passed")
    done = klass.churnlab(ALICE, "promote", "1")
    assert done.returncode == 1
    assert "needs 1 approval(s) of v1 by someone other than alice, has 0" in done.stderr

    # bob may read alice's model but not approve it; carol, her reviewer, may
    assert (
        klass.churnlab(BOB, "approve", "1", "--reason", "x", model="churn-model-alice").returncode
        == 4
    )
    out = ok(
        klass.churnlab(
            CAROL, "approve", "1", "--reason", "metrics checked", model="churn-model-alice"
        )
    )
    assert out == "Approved churn-model-alice v1 for Production by carol\n"

    out = ok(klass.churnlab(ALICE, "promote", "1"))
    assert out == "Promoted churn-model-alice v1 -> Production (approved by carol)\n"
    status = json.loads(ok(klass.churnlab(ALICE, "status", "--json")))
    production = status["stages"]["production"]
    assert (production["version"], production["approvals"]) == (1, [CAROL])
    assert production["approvals_required"] == 1 and status["consistent"]
    timeline = json.loads(ok(klass.churnlab(ALICE, "history", "--json")))
    approve = [e for e in timeline if e["action"] == "approve"]
    assert [(e["actor"], e["actor_source"], e["version"]) for e in approve] == [
        (CAROL, "server", 1)
    ]
    promote = [e for e in timeline if e["action"] == "promote"][-1]
    assert promote["approved_by"] == [CAROL] and promote["actor"] == ALICE


def test_a_batch_run_is_recorded_as_the_login(klass, tmp_path):
    """`churnlab score` records its MLflow run as the user the server logged in, not as the
    CHURNLAB_ACTOR the student's environment declares (mallory)."""
    from churnlab import data

    data.write_csv(data.generate(200, seed=3), tmp_path / "in.csv")
    args = ("score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--json")
    result = json.loads(ok(klass.churnlab(ALICE, *args)))
    assert (result["model_name"], result["version"]) == (classroom.model_for(ALICE), 1)
    with as_student(klass, ALICE) as client:
        run = client.get_run(result["batch_run_id"])
    assert run.data.tags["mlflow.user"] == ALICE


def test_an_out_of_band_move_is_detected_and_restored(klass):
    with as_student(klass, ALICE) as client:  # alice bypasses churnlab with a raw client
        name = classroom.model_for(ALICE)
        client.copy_model_version(f"models:/{name}/1", name)  # v2
        client.set_registered_model_alias(name, "production", "2")
    done = klass.churnlab(ALICE, "status")
    assert done.returncode == 1, done.stdout
    assert (
        "alias production names v2 but no recorded event put it there "
        "(the history's last production move names v1)"
    ) in done.stdout
    assert "production v2 was moved there with 0 of the 1 approval(s)" in done.stdout
    print(f"\nout-of-band move, as `churnlab status` reports it:\n{done.stdout}")

    out = ok(klass.churnlab(ALICE, "repair", "--restore"))
    assert out.startswith("restored: alias production names v2")
    status = json.loads(ok(klass.churnlab(ALICE, "status", "--json")))
    assert status["consistent"], status["problems"]
    assert status["stages"]["production"]["version"] == 1
    last = json.loads(ok(klass.churnlab(ALICE, "history", "--json")))[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == ("repair", 2, 1)
    assert last["actor"] == ALICE and "outside churnlab" in last["reason"]


def test_a_move_that_would_change_nothing_still_needs_edit(klass):
    """Production already holds v1: the owner's promote is a no-op, anyone else's a refusal."""
    before = state(klass, ALICE)
    assert before["aliases"]["production"] == "1"
    done = klass.churnlab(
        BOB, "promote", "1", "--override", "--reason", "no-op", model="churn-model-alice"
    )
    assert (done.returncode, done.stdout) == (4, ""), done.stderr
    assert done.stderr == (
        "churnlab: permission denied: bob may not move @production of churn-model-alice\n"
    )
    assert state(klass, ALICE) == before
    out = ok(klass.churnlab(ALICE, "promote", "1"))
    assert out == "churn-model-alice v1 already holds Production\n"


def test_a_refusal_outside_the_registry_names_what_was_tried(klass):
    """alice trains into bob's experiment: MLflow's own run logging is refused (403)."""
    done = klass.churnlab(
        ALICE, "train", "--rows", "300", CHURNLAB_EXPERIMENT=classroom.experiment_for(BOB)
    )
    assert (done.returncode, done.stdout) == (4, ""), done.stderr
    assert done.stderr == (
        "churnlab: permission denied: alice may not start a run in experiment churnlab-bob\n"
    )


def test_a_login_the_admin_removed_or_changed_is_one_clear_line(klass):
    """Basic auth has no session to expire; a login the admin deletes or whose password the
    admin changes after the student logged in is its "expired session"."""
    klass.add_students("username\ndave\nerin\n")
    alice = classroom.model_for(ALICE)
    for user in ("dave", "erin"):  # logged in and working
        ok(klass.churnlab(user, "history", model=alice))
    admin = klass.admin()
    api = f"{klass.url}/api/2.0/mlflow/users"
    assert admin.delete(f"{api}/delete", json={"username": "dave"}).status_code == 200
    changed = {"username": "erin", "password": "changed-by-the-teacher-42"}
    assert admin.patch(f"{api}/update-password", json=changed).status_code == 200

    def line(user: str) -> str:
        return (
            f"churnlab: login refused by {klass.url}: wrong user name or password for {user}, "
            "or the admin changed or removed that login (MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD)\n"
        )

    # deleted: refused at once, even by a server worker that still remembers the login
    for args in (("status",), ("history",), ("promote", "1", "--override", "--reason", "x")):
        done = klass.churnlab("dave", *args, model=alice)
        assert (done.returncode, done.stdout, done.stderr) == (4, "", line("dave")), args
    # changed: a worker may accept the old password for up to auth_cache_ttl_seconds (60)
    # the auth app may accept an old password for 60 s (its auth_cache_ttl_seconds)
    deadline = time.monotonic() + 90
    while True:
        done = klass.churnlab("erin", "status", model=alice)
        if done.returncode != 0:
            break
        assert time.monotonic() < deadline, "the old password still works after 90 s"
        # each try is a command: every 3 s is often enough
        time.sleep(3)
    assert (done.returncode, done.stdout, done.stderr) == (4, "", line("erin"))
    for out in klass.outputs:
        assert klass.passwords["dave"] not in out and klass.passwords["erin"] not in out


def test_a_wrong_password_or_unknown_user_is_one_clear_line(klass):
    wrong = "not-the-password-4711"
    for user in (ALICE, "nobody"):
        env = klass.env(ALICE, wrong) | {"MLFLOW_TRACKING_USERNAME": user}
        done = cli("--model", "churn-model-alice", "status", env=env)
        assert done.returncode == 4, (done.stdout, done.stderr)
        assert done.stderr == (
            f"churnlab: login refused by {klass.url}: wrong user name or password for {user}, "
            "or the admin changed or removed that login (MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD)\n"
        )
        assert wrong not in done.stdout + done.stderr


def test_no_password_is_kept_anywhere_but_the_teachers_screen(klass):
    layout = classroom.Layout(klass.folder)
    admin = classroom.admin_credentials(layout)
    logins = [(u, p) for u, p in klass.passwords.items() if u in (ALICE, BOB, CAROL)] + [admin]
    assert all(p in klass.add_output for u, p in logins[:3])  # shown to the teacher, once
    needles = [form for login in logins for form in forms(*login)]
    assert stat.S_IMODE(layout.ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.ini.parent.stat().st_mode) == 0o700

    # every student command's output (history and status included) and the server command's
    assert len(klass.outputs) > 20
    outputs = [*klass.outputs, (klass.folder.parent / "class-server.out").read_text()]
    assert [o for o in outputs for n in needles if n.decode() in o] == []
    # the server's command lines and environment-free files: its log, the artifacts, the
    # auth folder but the ini (the admin's password lives there, 0600), PostgreSQL's
    # cluster (its data and log)
    cmdlines = [open(f"/proc/{pid}/cmdline", "rb").read() for pid in klass.server_pids()]
    assert cmdlines, "no server process found"
    assert [c for c in cmdlines for n in needles if n in c] == []
    assert (klass.folder / "mlflow-server.log").stat().st_size > 0
    assert any((klass.folder / "artifacts").rglob("MLmodel"))  # the students' models
    assert files_containing(klass.folder, needles, skip=(layout.ini,)) == []
    assert files_containing(postgres.postgres_folder(klass.folder), needles) == []
    # every tag (history, approvals, evidence), parameter and dataset source on the server
    texts = registry_texts(klass)
    assert any(tags.EVENT_PREFIX in t for t in texts) and len(texts) > 20
    assert [t for t in texts for n in needles if n.decode() in t] == []
