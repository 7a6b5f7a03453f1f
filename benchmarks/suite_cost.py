"""What a test run costs: wall time, CPU-seconds of every process it started, and the
process start-ups, by test folder.

    python -m benchmarks.suite_cost run --out DIR -- make test
    python -m benchmarks.suite_cost compare BEFORE_DIR AFTER_DIR

``run`` writes ``DIR/cost.json``:

- CPU: this process becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so processes
  orphaned by their parents (servers stopped by process group, a daemonised PostgreSQL) are
  reaped here and their CPU time is counted too (``/usr/bin/time`` misses it);
- CPU by test folder: each pytest process's own CPU in each test (a plugin, loaded through
  ``PYTEST_ADDOPTS``), plus the CPU of every process started during a test (``/proc``, read
  every 0.2 s; a process is a test's when ``PYTEST_CURRENT_TEST``, which children inherit, was
  set when it started);
- start-ups: a ``sitecustomize`` on ``PYTHONPATH`` logs, in every Python process of the run,
  its own start and each non-Python program it starts (``subprocess.Popen``,
  ``os.posix_spawn``, ``os.exec*``), with the running test. Programs started by non-Python
  ones (postgres by pg_ctl, Chromium's helpers) are not counted.

Not part of ``make test``: the measure of a test suite, for comparing two commits side by side.
"""

import argparse
import collections
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

SITE = r"""
import os, sys, json, threading
_LOG = os.environ.get("SUITE_COST_LOG")
def _area():
    t = os.environ.get("PYTEST_CURRENT_TEST") or ""
    return t.split(" ")[0]
def _write(kind, prog, argv):
    try:
        line = json.dumps({"pid": os.getpid(), "kind": kind, "prog": prog,
                           "argv": [str(a)[:80] for a in list(argv)[:4]], "test": _area()})
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\n").encode()); os.close(fd)
    except Exception:
        pass
def _is_python(path, env_path):
    import shutil
    try:
        p = os.fsdecode(path)
        if os.sep not in p:
            p = shutil.which(p, path=env_path) or p
        base = os.path.basename(p)
        if base.startswith("python"):
            return True
        with open(p, "rb") as f:
            head = f.read(128)
        return head.startswith(b"#!") and b"python" in head.split(b"\n")[0]
    except Exception:
        return False
_last = threading.local()
def _hook(event, args):
    if event == "subprocess.Popen":
        exe, argv, cwd, env = args
        argv = [argv] if isinstance(argv, (str, bytes)) else list(argv or [])
        prog = exe or (argv[0] if argv else "?")
        _last.argv = argv
        envp = (env or os.environ).get("PATH") if hasattr(env or os.environ, "get") else None
        if not _is_python(prog, envp):
            _write("exec", os.path.basename(os.fsdecode(prog)), argv)
    elif event in ("os.posix_spawn", "os.exec"):
        path, argv = args[0], list(args[1] or [])
        if getattr(_last, "argv", None) == argv:
            _last.argv = None
            return
        if not _is_python(path, None):
            _write("exec", os.path.basename(os.fsdecode(path)), argv)
if _LOG:
    _write("python", os.path.basename(sys.executable), getattr(sys, "orig_argv", sys.argv))
    sys.addaudithook(_hook)
"""

PLUGIN = r"""
import json, os, resource, time
_LOG = os.environ.get("SUITE_COST_LOG")
_start = {}
def pytest_configure(config):
    # xdist's controller replays its workers' logstart/logfinish: only where tests run
    global _LOG
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        _LOG = None
def _cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
def pytest_runtest_logstart(nodeid, location):
    _start[nodeid] = (_cpu(), time.monotonic())
def pytest_runtest_logfinish(nodeid, location):
    cpu0, t0 = _start.pop(nodeid, (_cpu(), time.monotonic()))
    if _LOG:
        line = json.dumps({"kind": "test", "test": nodeid, "self_cpu": _cpu() - cpu0,
                           "wall": time.monotonic() - t0, "pid": os.getpid()})
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\n").encode()); os.close(fd)
"""


class Sampler(threading.Thread):
    """Every 0.2 s: the CPU time of each descendant process, and the test it was started in."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stop, self.seen = root, threading.Event(), {}
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.scan()

    def scan(self) -> None:
        parents, cpu = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry)
            parents[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / self.tick
        mine = {self.root}
        grew = True
        while grew:
            new = {p for p, pp in parents.items() if pp in mine} - mine
            mine |= new
            grew = bool(new)
        for pid in mine - {self.root}:
            row = self.seen.get(pid)
            if row is None:
                test = ""
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        for item in f.read().split(b"\0"):
                            if item.startswith(b"PYTEST_CURRENT_TEST="):
                                test = item.split(b"=", 1)[1].decode(errors="replace").split(" ")[0]
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
                except OSError:
                    cmd = "?"
                row = self.seen[pid] = {"test": test, "cmd": cmd, "cpu": 0.0}
            row["cpu"] = max(row["cpu"], cpu.get(pid, 0.0))


def area(test: str) -> str:
    if not test:
        return "(outside a test)"
    parts = test.split("::")[0].split("/")
    if parts[0] == "tests" and len(parts) > 2:
        return "tests/" + parts[1]
    if parts[0] == "notebooks" or test.endswith(".ipynb"):
        return "notebooks (nbval)"
    return parts[0] if parts else test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite_cost")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run a command and measure it")
    run.add_argument("--out", required=True)
    run.add_argument("--linger", type=float, default=60.0)
    run.add_argument("command", nargs=argparse.REMAINDER)
    compare_ = sub.add_parser("compare", help="a table of two runs, by test folder")
    compare_.add_argument("before")
    compare_.add_argument("after")
    args = parser.parse_args(argv)
    if args.action == "compare":
        print(compare(args.before, args.after))
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    os.makedirs(args.out, exist_ok=True)
    site = tempfile.mkdtemp(prefix="suite-cost-site-")
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(SITE)
    with open(os.path.join(site, "suite_cost_plugin.py"), "w") as f:
        f.write(PLUGIN)
    log = os.path.join(os.path.abspath(args.out), "starts.jsonl")
    open(log, "w").close()
    env = dict(os.environ)
    env["SUITE_COST_LOG"] = log
    env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTEST_ADDOPTS"] = (env.get("PYTEST_ADDOPTS", "") + " -p suite_cost_plugin").strip()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    start = time.monotonic()
    sampler = Sampler(os.getpid())
    sampler.start()
    proc = subprocess.Popen(command, env=env)
    code = proc.wait()
    sampler.stop.set()
    sampler.join()
    wall = time.monotonic() - start
    # reap whatever the command left behind (orphans reparented to us)
    deadline = time.monotonic() + args.linger
    leftovers = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if time.monotonic() > deadline:
                leftovers = [
                    p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == os.getpid()
                ]
                for p in leftovers:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline = float("inf")
            time.sleep(0.2)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    starts = collections.Counter()
    programs = collections.Counter()
    per_test = collections.Counter()
    cpu_area = collections.Counter()
    wall_area = collections.Counter()
    cpu_test = collections.Counter()
    for row in sampler.seen.values():  # processes started in a test (their own CPU)
        if row["test"]:
            cpu_area[area(row["test"])] += row["cpu"]
            cpu_test[row["test"]] += row["cpu"]
    with open(log) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row["kind"] == "test":  # the pytest process's own CPU in each test
                test = row["test"].split("@")[0]
                cpu_area[area(test)] += row["self_cpu"]
                wall_area[area(test)] += row["wall"]
                cpu_test[test] += row["self_cpu"]
                continue
            a = area(row["test"])
            starts[a] += 1
            prog = (
                row["prog"]
                if row["kind"] == "exec"
                else "python " + " ".join(os.path.basename(x) for x in row["argv"][1:3])
            )
            programs[(a, prog[:60])] += 1
            if row["test"]:
                per_test[row["test"]] += 1
    result = {
        "command": command,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "user_s": round(usage.ru_utime, 1),
        "sys_s": round(usage.ru_stime, 1),
        "max_rss_mb": round(usage.ru_maxrss / 1024),
        "leftover_processes": leftovers,
        "cpu_by_area": {k: round(v, 1) for k, v in sorted(cpu_area.items())},
        "cpu_in_tests": round(sum(cpu_area.values()), 1),
        "test_seconds_by_area": {k: round(v, 1) for k, v in sorted(wall_area.items())},
        "cpu_by_test": {k: round(v, 1) for k, v in cpu_test.most_common(60)},
        "starts_total": sum(starts.values()),
        "starts_by_area": dict(sorted(starts.items())),
        "starts_by_program": {f"{a} | {p}": n for (a, p), n in programs.most_common(80)},
        "starts_by_test": dict(per_test.most_common(60)),
    }
    with open(os.path.join(args.out, "cost.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "exit_code",
                    "wall_s",
                    "cpu_s",
                    "cpu_in_tests",
                    "cpu_by_area",
                    "starts_total",
                    "starts_by_area",
                    "leftover_processes",
                )
            },
            indent=1,
        )
    )
    return code


def compare(before_dir: str, after_dir: str) -> str:
    """A Markdown table of two runs' figures by test folder, and the ratios."""
    before, after = (json.load(open(os.path.join(d, "cost.json"))) for d in (before_dir, after_dir))
    keys = ("test_seconds_by_area", "cpu_by_area", "starts_by_area")
    areas = sorted({a for run in (before, after) for k in keys for a in run.get(k, {})})
    lines = [
        "| area | test time (s) before | after | CPU (s) before | after | start-ups before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in areas:
        cells = [run.get(k, {}).get(a, 0) for k in keys for run in (before, after)]
        lines.append(f"| {a} | " + " | ".join(f"{x:.0f}" for x in cells) + " |")
    lines.append(
        f"| whole run | wall {before['wall_s']:.0f} | {after['wall_s']:.0f} "
        f"| {before['cpu_s']:.0f} | {after['cpu_s']:.0f} "
        f"| {before['starts_total']} | {after['starts_total']} |"
    )
    lines.append(
        f"\nratios after/before: wall {after['wall_s'] / before['wall_s']:.2f}, "
        f"CPU {after['cpu_s'] / before['cpu_s']:.2f}, "
        f"start-ups {after['starts_total'] / before['starts_total']:.2f}"
    )
    return "\n".join(lines)


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


if __name__ == "__main__":
    sys.exit(main())
