"""Pipeline benchmark: wall time of each notebook and of the whole `make workbook`.

Runs ``make workbook`` exactly as a student would (fresh registry, all five notebooks,
the HTML report) but writes into a temporary folder instead of reports/. ``make setup``
runs first, untimed, so that an out-of-date environment stamp does not time pip.
Prints one table and writes reports/bench/pipeline.json.

    python -m benchmarks.pipeline [--timeout 900]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import ROOT, machine, machine_line, table, write_json

NOTEBOOK_LINE = re.compile(r"^\s+(\d\d_\w+)\s+(ok|FAILED)\s+([\d.]+) s\s*$")
#: the runner's line for its one kernel: started, modules imported, fresh registry created
KERNEL_LINE = re.compile(r"^\s+kernel\s+ready\s+([\d.]+) s\s*$")
TARGET_S = 60.0


def measure(timeout: float) -> dict[str, Any]:
    info = machine()
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    report: dict[str, Any] = {"machine": info, "notebooks": {}, "target_s": TARGET_S}
    if not notebooks:
        report["error"] = "no notebooks/NN_*.ipynb yet: nothing to time"
        return report
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.pop("CHURNLAB_HOME", None)  # the runner makes its own fresh registry
    subprocess.run(
        ["make", "-s", "setup"], cwd=ROOT, env=env, check=True, timeout=timeout, capture_output=True
    )
    with tempfile.TemporaryDirectory(prefix="churnlab-bench-wb-") as out:
        start = time.perf_counter()
        done = subprocess.run(
            ["make", "-s", "workbook", f"ARGS=--output {out}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        total = time.perf_counter() - start
    for line in done.stdout.splitlines():
        k = KERNEL_LINE.match(line)
        if k:
            report["kernel_ready_s"] = float(k.group(1))
        m = NOTEBOOK_LINE.match(line)
        if m:
            report["notebooks"][m.group(1)] = {"status": m.group(2), "seconds": float(m.group(3))}
    report["make_workbook_s"] = round(total, 1)
    report["exit_code"] = done.returncode
    report["met"] = done.returncode == 0 and total <= TARGET_S
    if done.returncode != 0:
        report["error"] = (done.stdout + done.stderr).strip().splitlines()[-5:]
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def render(report: dict[str, Any]) -> str:
    if "make_workbook_s" not in report:
        return f"pipeline: {report.get('error')}"
    rows = []
    if "kernel_ready_s" in report:
        rows.append(
            ["kernel start, imports, fresh registry", f"{report['kernel_ready_s']:.1f}", "ok"]
        )
    rows += [[name, f"{r['seconds']:.1f}", r["status"]] for name, r in report["notebooks"].items()]
    verdict = "met" if report["met"] else "MISSED"
    rows.append(
        [
            "make workbook (all, incl. report)",
            f"{report['make_workbook_s']:.1f}",
            f"<= {TARGET_S:.0f} s: {verdict}",
        ]
    )
    lines = [table(["step", "wall time (s)", "status / target"], rows)]
    if report.get("error"):
        lines += ["", "error: " + " | ".join(report["error"])]
    info = report["machine"]
    lines += ["", f"machine: {machine_line(info)}, at end {info['load_average_end'][0]}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900, help="seconds before giving up")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    report = measure(args.timeout)
    path = write_json("pipeline", report)
    print(render(report))
    print(f"\nwritten: {path.relative_to(ROOT)}")
    if report.get("exit_code", 0) != 0:
        return 1
    return 1 if args.strict and not report.get("met", False) else 0


if __name__ == "__main__":
    sys.exit(main())
