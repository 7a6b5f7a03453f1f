"""Bad training files: `churnlab train --data FILE` names the problem and writes nothing.

Each file is a way a real CSV goes wrong (empty, cut off, saved in another encoding or
layout); each run is the CLI's entry point, ``churnlab.cli.main``, in this process (the
console script's own exit codes and one-line errors: tests/core/test_cli.py, test_train.py);
afterwards the registry must hold no run, no version and no registered model.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from churnlab import cli, data


@pytest.fixture(scope="module")
def good_text() -> str:
    return data.to_csv_text(data.generate(300, seed=11))


def _cut(text: str, fraction: float) -> str:
    return text[: int(len(text) * fraction)]


def _lines(text: str) -> list[str]:
    return text.splitlines()


#: name -> (bytes of the file, a pattern the one-line error must contain)
CASES = {
    "empty": (lambda t: b"", r"the file is empty"),
    "blank lines only": (lambda t: b"\n \n\n", r"the file is empty"),
    "truncated mid-row": (lambda t: _cut(t, 0.61).encode(), r"line \d+ has \d+ of 21 fields"),
    "truncated in a quoted field": (
        lambda t: (_cut(t, 0.4).rsplit("\n", 1)[0] + '\n"7590-VHVEG,Female').encode(),
        r"truncated|not a readable CSV",
    ),
    "UTF-16 with BOM": (lambda t: t.encode("utf-16"), r"UTF-16 .*not UTF-8"),
    "UTF-16 without BOM": (lambda t: t.encode("utf-16-le"), r"UTF-16 .*not UTF-8"),
    "latin-1 bytes": (
        lambda t: t.replace("Female", "Fémale", 1).encode("latin-1"),
        r"not UTF-8 text \(byte \d+\)",
    ),
    "header only": (lambda t: (_lines(t)[0] + "\n").encode(), r"no rows"),
    "missing columns": (
        lambda t: "\n".join(",".join(r.split(",")[:5]) for r in _lines(t)).encode(),
        r"missing columns \['tenure', 'PhoneService'",
    ),
    "another data set": (
        lambda t: b"sepal_length,sepal_width,species\n5.1,3.5,setosa\n4.9,3.0,setosa\n",
        r"none of the Telco churn columns",
    ),
    "semicolon separated": (lambda t: t.replace(",", ";").encode(), r"separated by ';'"),
    "extra field in a row": (
        lambda t: "\n".join([_lines(t)[0], _lines(t)[1] + ",oops", *_lines(t)[2:]]).encode(),
        r"line 2 has 22 fields but the header has 21",
    ),
    "wrong values": (
        lambda t: t.replace("Month-to-month", "monthly").encode(),
        r"Contract has values outside",
    ),
    "non-numeric tenure": (
        lambda t: "\n".join(
            [
                _lines(t)[0],
                *[_replace_field(r, 5, "twelve") for r in _lines(t)[1:4]],
                *_lines(t)[4:],
            ]
        ).encode(),
        r"tenure has 3 non-numeric value",
    ),
    "a spreadsheet, not a CSV": (
        lambda t: b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4,
        r"not UTF-8",
    ),
}


class Done(NamedTuple):
    """What one command gave: its exit code and output (as a CompletedProcess names them)."""

    returncode: int
    stdout: str
    stderr: str


def _replace_field(row: str, index: int, value: str) -> str:
    fields = row.split(",")
    fields[index] = value
    return ",".join(fields)


def registry_contents(home: Path) -> dict[str, int]:
    """Runs, versions and registered models in the embedded store (0s when it has none)."""
    db = home / "mlflow.db"
    if not db.exists():
        return {"runs": 0, "versions": 0, "models": 0}
    from mlflow.tracking import MlflowClient

    from churnlab import store

    store.configure()
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments) if experiments else []
    return {
        "runs": len(runs),
        "versions": len(client.search_model_versions()),
        "models": len(client.search_registered_models()),
    }


def test_bad_training_files_are_refused_by_name_and_write_nothing(
    tmp_path, good_text, isolated_home, capsys
):
    files = {}
    for name, (make, _) in CASES.items():
        path = tmp_path / (name.replace(" ", "_").replace(",", "") + ".csv")
        path.write_bytes(make(good_text))
        files[name] = path

    results = {}
    for name in CASES:
        code = cli.main(["train", "--data", str(files[name])])
        out, err = capsys.readouterr()
        results[name] = Done(code, out, err)

    import re

    print()
    for name, (_, pattern) in CASES.items():
        done = results[name]
        message = done.stderr.strip()
        print(f"  {name:28} exit {done.returncode}: {message}")
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert done.stdout == "", (name, done.stdout)
        assert len(message.splitlines()) == 1, (name, message)
        assert message.startswith("churnlab: ") and files[name].name in message, (name, message)
        assert re.search(pattern, message), (name, pattern, message)
        assert "Traceback" not in done.stderr
    assert registry_contents(isolated_home) == {"runs": 0, "versions": 0, "models": 0}
    assert not (isolated_home / "artifacts").exists() or not any(
        (isolated_home / "artifacts").iterdir()
    )


def test_the_intact_file_is_accepted_so_the_refusals_are_about_the_damage(tmp_path, good_text):
    """The file every bad case was made from loads: 300 validated rows."""
    path = tmp_path / "good.csv"
    path.write_text(good_text, encoding="utf-8")
    assert len(data.load_csv(path)) == 300
    path.write_bytes(b"\xef\xbb\xbf" + good_text.encode())  # a UTF-8 BOM, as Excel writes
    assert len(data.load_csv(path)) == 300
