"""The one shape of a check and of a result made of checks: gate, smoke, verify and drift.

A :class:`Check` is one measured fact compared with its threshold: ``pass``, ``fail`` or
``skip``. A :class:`Result` is a verdict on one version made of checks; each step
(``gate.GateResult``, ``smoke.SmokeResult``, ``verify.VerifyResult``,
``drift.DriftResult``) subclasses it, adds its own fields and words its own summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

Status = Literal["pass", "fail", "skip"]
STATUSES: tuple[str, ...] = ("pass", "fail", "skip")
#: the columns of every check table, in order
COLUMNS: tuple[str, ...] = ("name", "status", "value", "operator", "threshold", "detail")


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``value`` compared with ``threshold`` by ``operator``."""

    name: str
    status: Status
    value: Any = None
    threshold: Any = None
    operator: str = ""
    detail: str = ""

    @classmethod
    def of(
        cls,
        name: str,
        ok: bool | None,
        value: Any = None,
        threshold: Any = None,
        operator: str = "",
        detail: str = "",
    ) -> Check:
        """A check from a yes/no answer; ``ok`` None means it could not be measured (skip)."""
        status: Status = "skip" if ok is None else ("pass" if ok else "fail")
        return cls(name, status, value, threshold, operator, detail)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Check:
        """A check from :meth:`to_dict`'s output (unknown keys are ignored)."""
        known = {k: values[k] for k in COLUMNS if k in values}
        return cls(**known)

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Result:
    """A verdict on one version of a model, made of checks.

    Passed when no check failed (and, where ``needs_checks``, at least one ran).
    """

    model_name: str
    version: int | None
    checks: list[Check] = field(default_factory=list)

    #: what a result of this kind is called in its summary line ("Gate", "Smoke check")
    title: ClassVar[str] = "Check"
    #: an empty list of checks is a failure (nothing was proven)
    needs_checks: ClassVar[bool] = False

    @property
    def passed(self) -> bool:
        if self.needs_checks and not self.checks:
            return False
        return not any(c.status == "fail" for c in self.checks)

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def check(self, name: str) -> Check | None:
        """The check called ``name``, or None."""
        return next((c for c in self.checks if c.name == name), None)

    def figures(self) -> dict[str, Any]:
        """Measured figures recorded beside the checks (none by default)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
        }

    def table(self, columns: tuple[str, ...] = COLUMNS):
        """The checks as a DataFrame (for notebooks and reports)."""
        import pandas as pd

        return pd.DataFrame([c.to_dict() for c in self.checks], columns=list(columns))

    def summary(self) -> str:
        """One line: the verdict, and the failing checks when it failed."""
        who = f"{self.model_name} v{self.version}"
        if self.passed:
            return f"{self.title} passed: {who} ({len(self.checks)} checks)"
        why = "; ".join(f"{c.name}: {c.detail or c.value}" for c in self.failed)
        return f"{self.title} failed: {who}: {why or 'no checks ran'}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """A notebook cell that ends with a step's call shows its summary line, not the
        dataclass with every check (the tables show those)."""
        printer.text(self.summary())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # IPython prefers a subclass's own __repr__ (the dataclass's) to an inherited
        # _repr_pretty_, so each step's result carries it itself
        cls._repr_pretty_ = Result._repr_pretty_
