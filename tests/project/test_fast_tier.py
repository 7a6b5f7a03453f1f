"""The fast tier stays fast: a test that starts a server, a browser or a load is marked slow.

tests/conftest.py fails an unmarked test at the moment it starts one (an audit hook on
``subprocess.Popen``); ``support.slow_program`` says what a command line starts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import slow_program

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["/venv/bin/mlflow", "server", "--port", "5000"], "`mlflow server`"),
        ([sys.executable, "-m", "mlflow", "ui"], "`mlflow ui`"),
        ("mlflow server --host 127.0.0.1", "`mlflow server`"),
        ([sys.executable, "-m", "uvicorn", "serving.app:app"], "a uvicorn backend"),
        (["/venv/bin/churnlab", "serve", "--port", "8000"], "`churnlab serve`"),
        (["/venv/bin/churnlab", "--model", "m", "smoke"], "`churnlab smoke`"),
        (["/venv/bin/churnlab", "workbook", "--output", "reports"], "`churnlab workbook`"),
        (["/venv/bin/churnlab", "class-server", "--folder", "f"], "`churnlab class-server`"),
        (["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/17/bin/initdb"], "PostgreSQL"),
        (["/pw/driver/node", "/pw/driver/package/cli.js", "run-driver"], "a browser"),
        (["/usr/bin/chromium", "--headless"], "a browser"),
        (["wrk", "-t2", "-c32", "http://127.0.0.1:1/"], "a load run (wrk)"),
        ([sys.executable, "-m", "ipykernel_launcher", "-f", "k.json"], "a notebook kernel"),
        (["/usr/bin/java", "-cp", "spark.jar"], "a JVM"),
    ],
)
def test_commands_that_start_servers_browsers_or_loads_are_recognised(argv, what):
    assert slow_program(argv) == what


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/churnlab", "train", "--rows", "200"],
        ["/venv/bin/churnlab", "--model", "serve", "status"],  # a model named "serve"
        ["/venv/bin/churnlab", "promote", "1", "--reason", "serve it"],
        [sys.executable, "-c", "print('uvicorn')"],
        ["/venv/bin/hadolint", "serving/Dockerfile"],
    ],
)
def test_other_commands_are_not(argv):
    assert slow_program(argv) is None


def test_an_unmarked_test_that_starts_a_server_fails_naming_it():
    with pytest.raises(pytest.fail.Exception) as caught:
        subprocess.run([sys.executable, "-m", "uvicorn", "--version"], capture_output=True)
    assert "starts a uvicorn backend but is not marked slow" in str(caught.value)
    assert "test_an_unmarked_test_that_starts_a_server_fails_naming_it" in str(caught.value)


@pytest.mark.slow
def test_a_test_marked_slow_may_start_one():
    # a few seconds; 60 s means it hangs
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "uvicorn" in done.stdout


def _recipe(target: str) -> str:
    """The commands of one Makefile target."""
    text = (ROOT / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n|\n)*?)(?=^\S|\Z)", text, re.M)
    assert found, f"no {target} target in the Makefile"
    return found.group(1)


def test_make_test_fast_leaves_out_slow_tests_and_the_notebooks():
    recipe = _recipe("test-fast")
    assert '-m "not slow"' in recipe
    assert "nbval" not in recipe


def _load_sizes() -> dict[str, str]:
    """The full sizes `make test-load` sets (the Makefile's LOAD_SIZES)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    found = re.search(r"^LOAD_SIZES := (.*)$", text, re.M)
    assert found, "no LOAD_SIZES in the Makefile"
    return dict(pair.split("=", 1) for pair in found.group(1).split())


def test_make_test_load_runs_every_load_test_at_the_full_size_the_readme_names():
    assert "-m load" in _recipe("test-load") and "$(LOAD_SIZES)" in _recipe("test-load")
    sizes = _load_sizes()
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"^\|[^|]+\| `(CHURNLAB_\w+)` \|", readme, re.M))
    assert named == set(sizes), "README's table of load sizes and the Makefile differ"
    tests = {
        path: path.read_text()
        for path in (ROOT / "tests").rglob("test_*.py")
        if "pytest.mark.load" in path.read_text()
    }
    for variable in sizes:  # each size is one variable, read by a load test
        readers = [p.name for p, text in tests.items() if f'"{variable}"' in text]
        assert len(readers) == 1, (variable, readers)


def test_ci_fails_a_test_whose_program_is_missing_and_runs_the_full_sizes():
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export CI=true$", script, re.M)
    commands = [line for line in script.splitlines() if line.startswith("make ")]
    assert commands == ["make test", "make test-load"]
