"""Class benchmark: thirty students run the whole workbook at once on one class server.

A fresh class server (``churnlab class-server``'s own code: MLflow's basic-auth app on a
private PostgreSQL cluster, two server workers) gets the students with one
``class-add-students``. Each student has a machine of their own (a HOME for
``~/.mlflow/credentials``, a project config, a reports folder), logs in with ``churnlab
login`` and then runs ``churnlab workbook`` (the teacher's edition: every task done, then
the hand-in), all at the same time. Printed, and written to reports/bench/class.json:

- each notebook's wall time over the class, p50 and p95 (from the runner's lines);
- the failed requests (goal 0): the server's answers that no churnlab step expects (a 5xx,
  a refused or conflicting write), and the workbooks a failed request ended (unreachable,
  timed out); a workbook the exercise itself stopped (a gate its student's numbers fail) is
  counted apart, with why;
- the server's peak memory (all its processes, sampled twice a second) and PostgreSQL's.

    python -m benchmarks.class [--students 30] [--at-once N] [--keep]

The students' machines are simulated on this one: their kernels and the backends 03 to 05
start run here too, beside the server, where a class has them on its own laptops. So by
default as many run at once as this machine's cores and memory hold, two per core and
1 GiB each (:func:`room_for`); the rest start as soon as one finishes. Beyond that the
machine's CPU is measured, not the server: 22 at once on 2 cores left the server's reads
without an answer in 5 s (MLflow's client's fail-fast timeout), and 16 of 30 runs stopped. Speed goals live here,
never in the timed tests. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BIN,
    ROOT,
    machine,
    machine_line,
    percentile,
    process_tree,
    table,
    write_json,
)
from churnlab import classroom, postgres, store
from churnlab.backend import free_port, memory_kb

CHURNLAB = str(BIN / "churnlab")
NOTEBOOK_LINE = re.compile(r"^\s+(kernel|\d\d_\w+)\s+(ready|ok|FAILED)\s+([\d.]+) s\s*$")
REQUEST_LINE = re.compile(r'"(GET|POST|PATCH|DELETE|PUT) (/[^ ?"]*)[^"]*" (\d{3})')
#: answers a churnlab step expects and handles: an empty stage (no alias), a model that
#: exists already, an experiment or a run looked up before it exists
EXPECTED = (
    ("GET", "/api/2.0/mlflow/registered-models/alias", "400"),
    ("GET", "/api/2.0/mlflow/registered-models/alias", "404"),
    ("POST", "/api/2.0/mlflow/registered-models/create", "400"),
    ("GET", "/api/2.0/mlflow/experiments/get-by-name", "404"),
)
#: a student's workbook at its peak: runner, kernel and backends (MiB)
STUDENT_MB = 1024
#: the goals: every workbook finishes, no request fails, and a class's server stays small
GOAL_FAILED = 0
GOAL_SERVER_MB = 2048


class Sampler(threading.Thread):
    """The resident memory of a set of processes, sampled twice a second; its peak."""

    def __init__(self, pids) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            mb = sum(memory_kb(pid) or 0 for pid in self.pids()) / 1024
            self.peak = max(self.peak, mb)
            self.done.wait(0.5)


def postgres_pids(folder: Path) -> list[int]:
    """The PostgreSQL processes of the class server's cluster (their command line or data
    folder names it)."""
    cluster = str(postgres.postgres_folder(folder))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(entry / "cwd")
                if cluster in argv or cwd.startswith(cluster):
                    found.append(int(entry.name))
    return found


def student_env(desk: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in store.SERVER_VARIABLES
        and k not in ("CHURNLAB_HOME", "CHURNLAB_MODEL", "CHURNLAB_EXPERIMENT", "VIRTUAL_ENV")
    }
    env.update(HOME=str(desk / "home"), CHURNLAB_CONFIG=str(desk / "churnlab.toml"), **extra)
    return env


def log_in(url: str, desks: dict[str, Path], passwords: dict[str, str]) -> list[str]:
    """Every student logs in (``churnlab login``, the password as a script passes it)."""
    procs = {}
    for user, desk in desks.items():
        (desk / "home").mkdir(parents=True, exist_ok=True)
        env = student_env(
            desk, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=passwords[user]
        )
        procs[user] = subprocess.Popen(
            [CHURNLAB, "login", url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    failed = []
    for user, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        if proc.returncode:
            failed.append(f"{user}: login exit {proc.returncode}: {out.strip()[-200:]}")
    return failed


def run_class(url: str, desks: dict[str, Path], at_once: int, timeout: float) -> dict:
    """Every student's ``churnlab workbook``, ``at_once`` at a time; their lines and ends."""
    pending = list(desks)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        _run_all(desks, at_once, deadline, pending, running, results)
    finally:  # an interrupted benchmark leaves no workbook running
        for proc, log, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
            log.close()
    return results


def _run_all(desks, at_once, deadline, pending, running, results) -> None:
    """Keep ``at_once`` workbooks running until every student has run; record each end."""
    while pending or running:
        while pending and len(running) < at_once:
            user = pending.pop(0)
            desk = desks[user]
            log = open(desk / "workbook.out", "w")  # noqa: SIM115 (closed when it ends)
            proc = subprocess.Popen(
                [CHURNLAB, "workbook", "--output", str(desk / "reports")],
                env=student_env(desk),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            running[user] = (proc, log, time.monotonic())
        for user, (proc, log, started) in list(running.items()):
            if proc.poll() is None and time.monotonic() < deadline:
                continue
            if proc.poll() is None:  # past the deadline: stop its whole group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()
            log.close()
            text = (desks[user] / "workbook.out").read_text(errors="replace")
            results[user] = {
                "exit": proc.returncode,
                "seconds": round(time.monotonic() - started, 1),
                "steps": {
                    m.group(1): float(m.group(3))
                    for m in map(NOTEBOOK_LINE.match, text.splitlines())
                    if m
                },
                "handed_in": "handed in the replay report" in text,
                "error": "" if proc.returncode == 0 else text.strip().splitlines()[-1][-300:],
            }
            results[user]["cause"] = cause(results[user])
            del running[user]
        time.sleep(1)


#: how a workbook that the server failed ends: unreachable, timed out, a 5xx, refused
SERVER_FAILURE = re.compile(
    r"RegistryUnavailable|PermissionDenied|cannot reach|Max retries|timed out|HTTP 5\d\d|"
    r"UniqueViolation|ConnectionError"
)


def cause(result: dict[str, Any]) -> str:
    """Why a workbook ended: ``ok``, ``server`` (a request failed) or ``exercise`` (a rule of
    the story stopped it: a gate the student's numbers fail, a refused move)."""
    if result["exit"] == 0:
        return "ok"
    return "server" if SERVER_FAILURE.search(result["error"]) else "exercise"


def server_answers(log: Path, offset: int) -> dict[str, Any]:
    """The server's answers after ``offset`` of its log: counts by status, and every one
    no churnlab step expects."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    statuses: dict[str, int] = {}
    unexpected: dict[str, int] = {}
    for method, path, status in REQUEST_LINE.findall(text):
        statuses[status] = statuses.get(status, 0) + 1
        if status.startswith("2") or (method, path, status) in EXPECTED:
            continue
        key = f"{method} {path} {status}"
        unexpected[key] = unexpected.get(key, 0) + 1
    return {"statuses": statuses, "unexpected": unexpected}


def measure(students: int, at_once: int, timeout: float, keep: bool) -> dict[str, Any]:
    info = machine()
    folder = Path(tempfile.mkdtemp(prefix="churnlab-bench-class-"))
    report: dict[str, Any] = {"machine": info, "students": students, "at_once": at_once}
    server = classroom.ClassServer(folder / "server", port=free_port())
    try:
        start = time.monotonic()
        server.start()
        report["server_start_s"] = round(time.monotonic() - start, 1)
        names = [f"student{i:02d}" for i in range(1, students + 1)]
        roster = folder / "students.csv"
        roster.write_text("username\n" + "\n".join(names) + "\n")
        added = classroom.add_students(roster, url=server.url, folder=server.layout.folder)
        passwords = {s.username: s.password for s in added}
        desks = {user: folder / "desks" / user for user in names}
        report["login_failures"] = log_in(server.url, desks, passwords)
        idle = sum(memory_kb(pid) or 0 for pid in process_tree(server.proc)) / 1024
        server_memory = Sampler(lambda: process_tree(server.proc))
        cluster_memory = Sampler(lambda: postgres_pids(server.layout.folder))
        server_memory.start()
        cluster_memory.start()
        offset = server.layout.log.stat().st_size
        start = time.monotonic()
        results = run_class(server.url, desks, at_once, timeout)
        report["wall_s"] = round(time.monotonic() - start, 1)
        server_memory.done.set()
        cluster_memory.done.set()
        report["server_mb"] = {"idle": round(idle, 1), "peak": round(server_memory.peak, 1)}
        report["postgres_peak_mb"] = round(cluster_memory.peak, 1)
        report["answers"] = server_answers(server.layout.log, offset)
        report["results"] = results
    finally:
        server.stop()
        if keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    results = report["results"]
    steps: dict[str, list[float]] = {}
    for result in results.values():
        for name, seconds in result["steps"].items():
            steps.setdefault(name, []).append(seconds)
    finished = [r for r in results.values() if r["exit"] == 0]
    unexpected = sum(report["answers"]["unexpected"].values())
    failed_runs = sum(1 for r in results.values() if r["cause"] == "server")
    return {
        "steps": {
            name: {
                "n": len(values),
                "p50": round(percentile(values, 50), 1),
                "p95": round(percentile(values, 95), 1),
            }
            for name, values in steps.items()
        },
        "workbook": {
            "n": len(finished),
            "p50": round(percentile([r["seconds"] for r in finished], 50), 1),
            "p95": round(percentile([r["seconds"] for r in finished], 95), 1),
        },
        "finished": len(finished),
        "handed_in": sum(1 for r in results.values() if r["handed_in"]),
        "stopped_by_the_exercise": sum(1 for r in results.values() if r["cause"] == "exercise"),
        "failed_requests": unexpected + failed_runs + len(report["login_failures"]),
    }


def render(report: dict[str, Any]) -> str:
    figures = report["summary"]
    rows = [
        [name, s["n"], f"{s['p50']:.1f}", f"{s['p95']:.1f}"]
        for name, s in sorted(figures["steps"].items(), key=lambda kv: kv[0] != "kernel")
    ]
    w = figures["workbook"]
    rows.append(["whole workbook, hand-in included", w["n"], f"{w['p50']:.1f}", f"{w['p95']:.1f}"])
    failed = figures["failed_requests"]
    lines = [
        f"### Class: {report['students']} students, {report['at_once']} at once "
        f"({report['machine']['time']})",
        "",
        table(["notebook (wall time, s)", "n", "p50", "p95"], rows),
        "",
        table(
            ["figure", "value", "goal"],
            [
                [
                    "workbooks finished and handed in",
                    f"{figures['finished']} / "
                    f"{report['students']} (handed in {figures['handed_in']})",
                    "all",
                ],
                [
                    "workbooks the exercise stopped (a gate the student's numbers fail)",
                    figures["stopped_by_the_exercise"],
                    "",
                ],
                [
                    "failed requests",
                    failed,
                    f"{GOAL_FAILED}: {'met' if failed <= GOAL_FAILED else 'MISSED'}",
                ],
                [
                    "class server memory, idle / peak (MiB, all its processes)",
                    f"{report['server_mb']['idle']:.0f} / {report['server_mb']['peak']:.0f}",
                    f"<= {GOAL_SERVER_MB}: "
                    f"{'met' if report['server_mb']['peak'] <= GOAL_SERVER_MB else 'MISSED'}",
                ],
                [
                    "PostgreSQL peak memory (MiB, all its processes)",
                    f"{report['postgres_peak_mb']:.0f}",
                    "",
                ],
                ["wall time, the whole class (s)", report["wall_s"], ""],
                [
                    "server answers by status",
                    ", ".join(
                        f"{k}: {v}" for k, v in sorted(report["answers"]["statuses"].items())
                    ),
                    "",
                ],
            ],
        ),
    ]
    for key, count in sorted(report["answers"]["unexpected"].items()):
        lines.append(f"- unexpected answer: {key} x{count}")
    for user, result in sorted(report["results"].items()):
        if result["exit"]:
            why = "a request failed" if result["cause"] == "server" else "the story stopped"
            lines.append(f"- {user} ({why}): exit {result['exit']}: {result['error']}")
    for failure in report["login_failures"]:
        lines.append(f"- {failure}")
    info = report["machine"]
    lines += [
        "",
        f"machine: {machine_line(info)}, at end {info['load_average_end'][0]}",
    ]
    return "\n".join(lines)


def room_for() -> int:
    """How many workbooks this machine runs at once beside the server: two per core, and
    no more than fit in the memory available now (MemAvailable / STUDENT_MB)."""
    by_cores = 2 * (os.cpu_count() or 1)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return max(1, min(by_cores, int(line.split()[1]) // 1024 // STUDENT_MB))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument(
        "--at-once",
        type=int,
        default=None,
        help="default: two per core, as many as the memory holds",
    )
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="for the whole class")
    parser.add_argument("--keep", action="store_true", help="keep the class's folder")
    args = parser.parse_args(argv)
    if postgres.postgres_bin() is None:
        print("the class benchmark needs PostgreSQL: apt-get install postgresql")
        return 2
    at_once = args.at_once or min(args.students, room_for())
    print(f"{args.students} students, {at_once} at once", flush=True)
    report = measure(args.students, at_once, args.timeout, args.keep)
    report["summary"] = summarize(report)
    path = write_json("class", report)
    print(render(report))
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0 if report["summary"]["failed_requests"] <= GOAL_FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
