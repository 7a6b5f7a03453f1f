"""The benchmark tables as Markdown, from reports/bench/*.json.

python -m benchmarks.report                  # print them
python -m benchmarks.report --update-readme  # and put them in benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import pipeline, serving
from benchmarks.common import OUT_DIR

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load(name: str) -> dict[str, Any] | None:
    path = OUT_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def markdown() -> str:
    """Both tables, each with the machine it ran on."""
    parts = []
    found = load("serving")
    if found:
        parts += [f"### Serving ({found['machine']['time']})", "", serving.render(found), ""]
    found = load("pipeline")
    if found:
        parts += [f"### Pipeline ({found['machine']['time']})", "", pipeline.render(found), ""]
    if not parts:
        raise SystemExit("no reports/bench/*.json yet: run `make bench` first")
    return "\n".join(parts).rstrip() + "\n"


def update_readme(text: str) -> None:
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{README} has no {START} ... {END} section")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    text = markdown()
    print(text)
    if args.update_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
