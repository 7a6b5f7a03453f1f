"""Every tag name churnlab writes on a registered model, a version or a run, in one place.

Tags are the evidence a version carries: the gate's and the smoke check's verdicts and
checks, the data snapshots it was built from, its ONNX artifact, and the history of moves
(events on the registered model). Where MLflow already names a tag (the git commit of a
run), the writer uses MLflow's own constant (``mlflow.utils.mlflow_tags``).
"""

from __future__ import annotations

#: prefix of every tag churnlab owns
PREFIX = "churnlab."

# ---------------------------------------------------------------- on a version
#: the gate's verdict: pending | passed | failed
GATE_VERDICT = "churnlab.gate.verdict"
#: one tag per gate check, ``churnlab.gate.<check>``: pass | fail | skip
GATE_PREFIX = "churnlab.gate."
#: the smoke check's verdict: none | pending | passed | failed
SMOKE_VERDICT = "churnlab.smoke.verdict"
#: one tag per smoke check and figure, ``churnlab.smoke.<check or figure>``
SMOKE_PREFIX = "churnlab.smoke."
#: the gate check that proves the ONNX graph equal to the pipeline (read by the scorer)
ONNX_PARITY = "churnlab.gate.onnx_parity"
#: the artifact path of the version's ONNX graph, when it has one
ONNX_ARTIFACT = "churnlab.onnx"
#: the estimator a version was trained with (also set on its run)
ESTIMATOR = "churnlab.estimator"
#: who registered the version (the server's login when it authenticates): may not approve it
REGISTERED_BY = "churnlab.registered_by"
#: the digest of each data snapshot, ``churnlab.data.<kind>`` (also set on its run)
DATA_PREFIX = "churnlab.data."
#: the snapshots every version records
DATA_KINDS: tuple[str, ...] = ("training", "evaluation", "reference")

#: the exercise: the student's own candidate (the value is the student's name or "reference")
EXERCISE_OWN = "churnlab.exercise.own"
#: the exercise: the replay of its strict gate (JSON: accuracy_min, verdict, ...)
EXERCISE_STRICT_GATE = "churnlab.exercise.strict_gate"
#: the exercise: what the production backend answered when Task 4's check saw it (JSON)
EXERCISE_SERVED = "churnlab.exercise.served"
#: the exercise: the hyperparameters the student set on their own candidate (JSON)
EXERCISE_PARAMS = "churnlab.exercise.params"
#: the walkthrough: which of its candidates a version is (baseline, logreg, retrain, main)
WORKBOOK_CANDIDATE = "churnlab.workbook.candidate"
#: the walkthrough: the story that trained it (student, seeds, rows, data, code commit), so
#: that a notebook run again finds its candidates instead of training them twice
WORKBOOK_STORY = "churnlab.workbook.story"

# ---------------------------------------------------------------- on a run
#: where the training data came from (a file name or ``synthetic:seed=…,rows=…``)
DATA_SOURCE = "churnlab.data_source"
#: the plain commit tag the exercise's scripts read (MLflow's own is set beside it)
GIT_COMMIT = "git_commit"

# ---------------------------------------------------------------- on the registered model
#: one tag per move of an alias, ``churnlab.event.<time ns>.<nonce>``: a JSON event
EVENT_PREFIX = "churnlab.event."
#: one tag per approval of a version for production, ``churnlab.approval.<time ns>.<nonce>``
APPROVAL_PREFIX = "churnlab.approval."
#: the approvals a production move needs on this model, at least (set by a class's teacher)
REQUIRED_APPROVALS = "churnlab.policy.production_approvals"

# ---------------------------------------------------------------- on a hand-in run
#: marks a run as a hand-in (``churnlab handin``): the value is the report's kind
HANDIN = "churnlab.handin"
#: the SHA-256 of the report handed in (its artifact ``handin/workbook.html``)
HANDIN_DIGEST = "churnlab.handin.digest"
#: the commit of the handout the student worked on
HANDIN_COMMIT = "churnlab.handin.commit"
#: the login the server checked when the report was handed in
HANDIN_LOGIN = "churnlab.handin.login"
#: the model the report describes
HANDIN_MODEL = "churnlab.handin.model"
#: what production's backend answered at hand-in (JSON), for Task 4
HANDIN_SERVED = "churnlab.handin.served"

#: the value of each verdict tag on a freshly registered version
INITIAL_VERDICTS: dict[str, str] = {GATE_VERDICT: "pending", SMOKE_VERDICT: "none"}

#: the verdict tag and the per-check prefix of each kind of recorded result
VERDICT_TAGS: dict[str, tuple[str, str]] = {
    "gate": (GATE_VERDICT, GATE_PREFIX),
    "smoke": (SMOKE_VERDICT, SMOKE_PREFIX),
}


def data_tag(kind: str) -> str:
    """The tag holding the digest of a version's ``kind`` snapshot."""
    return f"{DATA_PREFIX}{kind}"


def under(tags: dict[str, str], prefix: str) -> dict[str, str]:
    """The tags that start with ``prefix``, keyed by the rest of their name, sorted."""
    return {k[len(prefix) :]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}
