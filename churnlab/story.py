"""Whose story the notebooks tell: the student (a name set once, or a login), the seeds their
name gives, the data, and what makes two trainings of one candidate the same model."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab import config, store
from churnlab.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from churnlab.train import TrainResult

DEFAULT_SEED = 42
DEFAULT_ROWS = 7043
#: the reference story's seeds of the later candidates (what the committed notebooks show)
REFERENCE_SEEDS: dict[str, int] = {"retrain": 7, "main": 11}
#: a student's later candidates: the base seed plus these offsets
SEED_OFFSETS: dict[str, int] = {"base": 0, "retrain": 1, "main": 2}


def student_name(student: str | None = None) -> str | None:
    """Whose story: ``student`` when given, else the name ``churnlab config student`` set,
    else the logged-in user's login, else None (the reference story)."""
    if student is not None and str(student).strip():
        return str(student)
    return config.get("student") or store.logged_in_user()


@dataclass(frozen=True)
class Story:
    """Whose story the notebooks tell: the student, the seeds from the name, the data.

    ``student`` None is the reference story (seed ``seed``, the committed outputs). A name
    derives every seed (:func:`churnlab.student.seed_of`): the data, the split and the
    models of the base candidates, and the "retrain" and "main" candidates' seeds as
    offsets of it. ``data`` is a CSV in the IBM Telco layout instead of synthetic data;
    every candidate then trains on that file, split with the base seed.
    """

    student: str | None = None
    seed: int = DEFAULT_SEED
    rows: int = DEFAULT_ROWS
    data: str | None = None

    @classmethod
    def of(
        cls,
        student: str | None = None,
        *,
        seed: int = DEFAULT_SEED,
        rows: int = DEFAULT_ROWS,
        data: str | None = None,
    ) -> Story:
        """A validated story: a blank name or a missing data file is refused in one line."""
        from churnlab.student import normal_name

        name = None if student is None else normal_name(student)
        path = None
        if data is not None and str(data).strip():
            found = Path(str(data)).expanduser()
            if not found.is_file():
                raise InputError(f"data must be a CSV file in the Telco layout, got {data!r}")
            path = str(found.resolve())
        return cls(name, int(seed), int(rows), path)

    @property
    def base_seed(self) -> int:
        """The seed of the data, the split and the walkthrough's first candidates."""
        from churnlab.student import seed_of

        return self.seed if self.student is None else seed_of(self.student)

    def seed_for(self, role: str) -> int:
        """The seed of a candidate's role: ``base``, ``retrain`` or ``main``."""
        if role not in SEED_OFFSETS:
            raise InputError(f"role must be one of {list(SEED_OFFSETS)}, got {role!r}")
        if role == "base" or self.data is not None:  # one file: every candidate splits it alike
            return self.base_seed
        if self.student is None:
            return REFERENCE_SEEDS[role]
        from churnlab.student import SEED_BOUND

        return (self.base_seed + SEED_OFFSETS[role]) % SEED_BOUND

    @property
    def source(self) -> str:
        """``synthetic`` or the CSV's file name."""
        return "synthetic" if self.data is None else Path(self.data).name

    def key(self, role: str = "base") -> str:
        """What makes two trainings of one candidate the same model: the student, the
        role's seed, the rows, the data file's content and the code's commit."""
        from churnlab import train

        data = "synthetic" if self.data is None else _file_digest(self.data)
        who = self.student or "reference"
        commit = train.git_commit() or "unknown"
        return f"{who}|seed={self.seed_for(role)}|rows={self.rows}|data={data}|code={commit}"

    def line(self, details: bool = True) -> str:
        """One line naming the story (with its seed and data: ``details``), and how to make
        it your own when it is not yet."""
        told = f" (seed {self.base_seed}, {self.source} data)"
        told = told if details else ""
        if self.student is not None:
            return f"story: {self.student}'s{told}"
        return f"story: the reference story{told}; {_HOW_TO_NAME}"

    def frame(self) -> pd.DataFrame | None:
        """The CSV's validated rows, or None for synthetic data."""
        return None if self.data is None else _load_csv(self.data)

    def train(
        self,
        estimator: str,
        params: dict[str, Any] | None = None,
        *,
        role: str = "base",
        description: str = "",
        model_name: str | None = None,
    ) -> TrainResult:
        """Train and register one candidate on this story's data with the role's seed."""
        from churnlab import train

        return train.train_candidate(
            self.frame(),
            model_name=model_name or store.model_name(),
            estimator=estimator,
            params=params,
            seed=self.seed_for(role),
            rows=self.rows,
            description=description,
            data_source=None if self.data is None else self.source,
        )


_HOW_TO_NAME = (
    'no student name is set: `churnlab config student "Your Name"` in a terminal makes it '
    "yours (then restart the kernel)"
)


@functools.lru_cache(maxsize=4)
def _load_csv(path: str) -> pd.DataFrame:
    from churnlab import data

    return data.load_csv(path)


@functools.lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


__all__ = ["DEFAULT_ROWS", "DEFAULT_SEED", "Story", "student_name"]
