"""Thirty students at once on the class server.

The teacher adds 30 logins with one command. Then every student, at the same time (a pool of
worker processes, each playing whole students one after another), runs train (400 rows),
gate, stage, promote, a second version, stage, promote and rollback on their own model; two
also run the smoke check. Then each tries to move the next student's production alias and
must be refused, and reads back their own status and history. Reported (pytest -s, and
reports/class-load.json): unexpected errors, refusals, each command's p50/p95, the server's
memory, and how many histories are complete and agree with their aliases.

``CHURNLAB_CLASS_SIZE`` students: ``make test`` runs a class of 6 (more students than worker
processes, so commands still overlap on the server from every worker at once, and each
worker plays students one after another); ``make test-load`` the thirty.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import class_flow
import pytest
from support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.load, pytest.mark.xdist_group("class-server")]

STUDENTS = int(os.environ.get("CHURNLAB_CLASS_SIZE", "6"))
#: worker processes: the class at once, as far as 2 cores can carry it
WIDTH = int(os.environ.get("CHURNLAB_CLASS_WIDTH", "4"))
SMOKE_EVERY = 15  # students 1 and 16 also run the smoke check (a few, among thirty)


def expected_moves(user: str) -> list[tuple]:
    moves = [
        ("stage", "staging", 1),
        ("promote", "production", 1),
        ("unstage", "staging", None),
        ("stage", "staging", 2),
        ("promote", "production", 2),
        ("unstage", "staging", None),
        ("rollback", "production", 1),
    ]
    return [(user, "server", *m) for m in moves]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


class Memory(threading.Thread):
    """Samples the server's resident memory twice a second."""

    def __init__(self, klass) -> None:
        super().__init__(daemon=True)
        self.klass, self.samples, self.done = klass, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(self.klass.server_rss_mb())
            self.done.wait(0.5)


def test_thirty_students_at_once(class_server, tmp_path):
    names = [f"student{i:02d}" for i in range(1, STUDENTS + 1)]
    start = time.monotonic()
    class_server.add_students("username\n" + "\n".join(names) + "\n")
    added = time.monotonic() - start
    url, pw, home = class_server.url, class_server.passwords, str(tmp_path / "home")
    idle_mb = class_server.server_rss_mb()

    memory = Memory(class_server)
    memory.start()
    start = time.monotonic()
    with ProcessPoolExecutor(WIDTH, mp_context=get_context("spawn")) as pool:
        own = list(
            pool.map(
                class_flow.own_flow,
                *zip(
                    *[
                        (url, n, pw[n], home, i, i % SMOKE_EVERY == 1)
                        for i, n in enumerate(names, start=1)
                    ],
                    strict=True,
                ),
            )
        )
        others = names[1:] + names[:1]
        cross = list(
            pool.map(
                class_flow.cross_and_check,
                *zip(
                    *[(url, n, pw[n], home, o) for n, o in zip(names, others, strict=True)],
                    strict=True,
                ),
            )
        )
    wall = time.monotonic() - start
    memory.done.set()
    memory.join()

    errors = [e for r in own for e in r["errors"]]
    refusals = [
        r
        for r, other in zip(cross, others, strict=True)
        if r["refusal"]["code"] == 4
        and r["refusal"]["stdout"] == ""
        and r["refusal"]["stderr"]
        == f"churnlab: permission denied: {r['user']} may not move @production of churn-model-{other}\n"
    ]
    consistent = []
    for r in cross:
        status, history = r["status"], r["history"] or []
        moves = [
            (e["actor"], e.get("actor_source"), e["action"], e["alias"], e["to_version"])
            for e in history
        ]
        if (
            status
            and status["consistent"]
            and status["stages"]["production"]["version"] == 1
            and status["stages"]["staging"]["version"] is None
            and moves == expected_moves(r["user"])
        ):
            consistent.append(r["user"])
    times: dict[str, list[float]] = {}
    for r in own + cross:
        for name, values in r["times"].items():
            times.setdefault(name, []).extend(values)
    figures = {
        "students": STUDENTS,
        "worker_processes": WIDTH,
        "wall_seconds": round(wall, 1),
        "add_students_seconds": round(added, 1),
        "unexpected_errors": len(errors),
        "errors": errors[:10],
        "refusals": f"{len(refusals)}/{STUDENTS}",
        "histories_consistent": f"{len(consistent)}/{STUDENTS}",
        "gates_passed": sum(r.get("gate") == 0 for r in own),
        "smoke_checks": sum(1 for r in own if "smoke" in r["times"]),
        "server_rss_mb": {
            "idle": round(idle_mb, 1),
            "peak": round(max(memory.samples, default=0.0), 1),
            "end": round(class_server.server_rss_mb(), 1),
        },
        "commands": {
            name: {
                "n": len(values),
                "p50_s": round(percentile(values, 50), 3),
                "p95_s": round(percentile(values, 95), 3),
            }
            for name, values in sorted(times.items())
        },
    }
    print(f"\n{STUDENTS} students at once on the class server ({WIDTH} worker processes):")
    print(
        f"  wall {figures['wall_seconds']} s (adding the logins: {figures['add_students_seconds']} s)"
    )
    print(f"  unexpected errors {len(errors)}; refusals {figures['refusals']}")
    print(f"  histories complete and consistent with aliases {figures['histories_consistent']}")
    print(f"  server memory (MiB) {figures['server_rss_mb']}")
    for name, row in figures["commands"].items():
        print(f"  {name:16} n={row['n']:3}  p50 {row['p50_s']:6.2f} s  p95 {row['p95_s']:6.2f} s")
    out = ROOT / "reports" / "class-load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")

    assert errors == []
    assert len(refusals) == STUDENTS, [r["refusal"] for r in cross][:3]
    assert len(consistent) == STUDENTS, [
        r["history"] for r in cross if r["user"] not in consistent
    ][:1]
    assert figures["smoke_checks"] >= 1
