"""The student edition of the project (``churnlab handout DIR``): solutions out, prompts in.

The committed notebooks are the teacher's edition. Their cells are marked in nbgrader's
format (``metadata.nbgrader``; ``### BEGIN SOLUTION`` / ``### END SOLUTION``), and the
handout applies nbgrader's ``ClearSolutions`` rules with nbformat alone: a solution region
becomes ``# YOUR CODE HERE`` in code (no ``raise NotImplementedError()``: an untouched task
cell must run harmlessly) and ``YOUR ANSWER HERE`` in markdown; a solution cell without a
region becomes that stub entirely. Every output is cleared: the student runs the notebooks.

Everything else is copied as a fresh clone has it, except the teacher's guide. The copy is
built beside the target and renamed at the end, so a failure leaves nothing behind, and it
is refused if any sentence of the teacher's answers survived anywhere in it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from churnlab import store, work
from churnlab.errors import InputError, Refused

BEGIN_SOLUTION = "BEGIN SOLUTION"
END_SOLUTION = "END SOLUTION"
#: what replaces a solution region in a code cell: a comment, so the cell runs harmlessly
CODE_STUB = "# YOUR CODE HERE"
#: what replaces a written answer (nbgrader's ``ClearSolutions.text_stub``)
TEXT_STUB = work.PLACEHOLDER
#: the teacher's own files, never handed out (project-relative, POSIX)
TEACHER_ONLY = frozenset({"docs/teaching.md", "docs/your-work-teacher.png"})
#: what a fresh clone never has, for a project that is not a git checkout (cf. .gitignore)
_NEVER_COPIED = frozenset(
    {
        ".git",
        ".venv",
        ".churnlab",
        "__pycache__",
        ".ipynb_checkpoints",
        ".pytest_cache",
        ".hypothesis",
        "build",
        "mlruns",
        "mlflow.db",
        "churnlab.toml",
    }
)
#: a sentence of an answer counts as leaked prose from this many words on
_MIN_SENTENCE_WORDS = 5


@dataclass(frozen=True)
class Handout:
    """What ``write_handout`` wrote: the folder and what it changed."""

    path: Path
    files: int
    notebooks: int
    solutions_cleared: int
    answers_cleared: int
    uncommitted: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line, and a second naming the files git does not track yet, if any."""
        line = (
            f"wrote the student edition to {self.path}: {self.files} files; "
            f"{self.notebooks} notebooks with {self.solutions_cleared} solution(s) removed "
            f"and {self.answers_cleared} answer(s) turned into prompts"
        )
        if self.uncommitted:
            shown = ", ".join(self.uncommitted[:5]) + (", ..." if len(self.uncommitted) > 5 else "")
            line += f"\nincluding {len(self.uncommitted)} file(s) git does not track yet: {shown}"
        return line


# ---------------------------------------------------------------------------- notebooks
def _nbgrader(cell: Any) -> dict[str, Any]:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def clear_regions(source: str, stub: str) -> tuple[str, bool]:
    """``source`` with every solution region replaced by ``stub`` (indented like its marker).

    Returns the new source and whether a region was found. A region that is not closed,
    or opens inside another, raises ``ValueError`` (as nbgrader does).
    """
    out: list[str] = []
    inside = found = False
    for line in source.split("\n"):
        if BEGIN_SOLUTION in line:
            if inside:
                raise ValueError(f"{BEGIN_SOLUTION} inside another solution region")
            inside = found = True
            indent = re.match(r"\s*", line).group(0)
            out.extend(indent + stub_line for stub_line in stub.split("\n"))
        elif END_SOLUTION in line:
            if not inside:
                raise ValueError(f"{END_SOLUTION} without {BEGIN_SOLUTION}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN_SOLUTION} without {END_SOLUTION}")
    return "\n".join(out), found


def student_notebook(nb: Any, name: str = "notebook") -> tuple[Any, int, int]:
    """The student edition of a teacher's notebook (an nbformat node, copied).

    Returns the notebook, the number of solutions removed and of answers turned into
    prompts. Outputs, execution counts and run metadata are cleared everywhere.
    """
    import copy

    nb = copy.deepcopy(nb)
    solutions = answers = 0
    for index, cell in enumerate(nb.cells):
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        try:
            source, found = clear_regions(cell.source, stub)
        except ValueError as exc:
            raise InputError(f"{name} cell {index + 1}: {exc}") from None
        if _nbgrader(cell).get("solution") and not found:
            source = stub  # a whole answer (or solution) cell
        if source != cell.source:
            if cell.cell_type == "code":
                solutions += 1
            else:
                answers += 1
            cell.source = source
        cell.get("metadata", {}).pop("execution", None)
        cell.get("metadata", {}).pop("papermill", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("papermill", None)
    return nb, solutions, answers


def _sentences(text: str) -> Iterator[str]:
    for part in re.split(r"(?<=[.!?:;])\s+|\n\s*\n|^\s*[-*>#]+\s", text, flags=re.M):
        words = _normal(part or "").split()
        if len(words) >= _MIN_SENTENCE_WORDS:
            yield " ".join(words)


def _normal(text: str) -> str:
    """Lower case, markdown emphasis and code ticks dropped, white space collapsed."""
    return " ".join(re.sub(r"[*_`]+", "", text).casefold().split())


def answer_sentences(nb: Any) -> set[str]:
    """The sentences (of five words or more) of the teacher's answers in a notebook.

    Answers are the markdown solution cells and markdown solution regions: the prose a
    handout must not carry.
    """
    found: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        if _nbgrader(cell).get("solution"):
            found.update(_sentences(cell.source))
            continue
        for region in re.findall(
            rf"{BEGIN_SOLUTION}[^\n]*\n(.*?)\n[^\n]*{END_SOLUTION}", cell.source, re.S
        ):
            found.update(_sentences(region))
    return found


# ---------------------------------------------------------------------------- files
def project_files(root: Path) -> list[PurePosixPath]:
    """The files a fresh clone of ``root`` has, relative to it, sorted.

    In a git checkout: the tracked files and the new ones git does not ignore (as the next
    commit would have them), minus those deleted from the work tree. Otherwise a walk that
    leaves out environments, stores, caches and generated reports. The teacher's guide is
    never included.
    """
    listed = _git_files(root, "--cached", "--others", "--exclude-standard")
    if listed is None:
        listed = list(_walk(root))
    files = {PurePosixPath(p) for p in listed if p not in TEACHER_ONLY and (root / p).is_file()}
    return sorted(files)


def _git_files(root: Path, *which: str) -> list[str] | None:
    """``git ls-files`` of ``root`` with options ``which``; None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    command = ["git", "-C", str(root), "ls-files", "-z", *which]
    try:
        done = subprocess.run(command, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted({p for p in done.stdout.decode("utf-8").split("\0") if p})


def uncommitted_files(root: Path) -> list[str]:
    """The files of :func:`project_files` that git does not track yet (empty outside git)."""
    listed = _git_files(root, "--others", "--exclude-standard") or []
    return [p for p in listed if p not in TEACHER_ONLY and (root / p).is_file()]


def _walk(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        parts = relative.parts
        if any(p in _NEVER_COPIED or p.endswith(".egg-info") for p in parts):
            continue
        if parts[0] == "reports" and relative.as_posix() != "reports/README.md":
            continue
        if path.is_file():
            yield relative.as_posix()


def _text_of(path: Path) -> str | None:
    """The text a reader sees in a handed-out file (a notebook's cells), or None if binary."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    if path.suffix == ".ipynb":
        import nbformat

        nb = nbformat.reads(text, as_version=4)
        return "\n\n".join(c.source for c in nb.cells)
    return text


def leaked_answers(folder: Path, sentences: Iterable[str]) -> list[tuple[str, str]]:
    """``(file, sentence)`` for every answer sentence found in a text file under ``folder``."""
    sentences = sorted(set(sentences))
    leaks = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = _text_of(path)
        if text is None:
            continue
        flat = _normal(text)
        leaks.extend((path.relative_to(folder).as_posix(), s) for s in sentences if s in flat)
    return leaks


# ---------------------------------------------------------------------------- the handout
def _check_target(target: Path, root: Path, force: bool) -> None:
    if target == root or target in root.parents:
        raise InputError(f"refusing to write the handout over the project itself: {target}")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise InputError(f"{target} exists and is not empty (use --force to replace it)")


def write_handout(target: Path | str, *, root: Path | None = None, force: bool = False) -> Handout:
    """Write the student edition of the project at ``root`` (default: this checkout).

    Refuses a ``target`` that exists and is not empty unless ``force``, then replaces it.
    The copy is built in a temporary folder beside ``target`` and renamed at the end; on
    any failure the temporary folder is removed and ``target`` is left as it was.
    """
    import nbformat

    root = (root or store.project_root()).resolve()
    target = Path(target).expanduser().resolve()
    _check_target(target, root, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        notebooks = solutions = answers = 0
        sentences: set[str] = set()
        files = [p for p in project_files(root) if not _under(root / p, target, building)]
        for relative in files:
            source, dest = root / relative, building / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            if relative.suffix == ".ipynb":
                teacher = nbformat.read(source, as_version=4)
                student, cleared, prompted = student_notebook(teacher, relative.as_posix())
                nbformat.write(student, dest)
                sentences |= answer_sentences(teacher)
                notebooks += 1
                solutions += cleared
                answers += prompted
            else:
                shutil.copy2(source, dest)
        _record_commit(root, building)
        leaks = leaked_answers(building, sentences)
        if leaks:
            file, sentence = leaks[0]
            raise Refused(
                f"refused: the handout would show the teacher's answer in {file} "
                f"({len(leaks)} sentence(s), first: {sentence[:60]!r}...)"
            )
        _replace(target, building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    copied = {p.as_posix() for p in files}
    uncommitted = tuple(p for p in uncommitted_files(root) if p in copied)
    return Handout(target, len(files), notebooks, solutions, answers, uncommitted)


def _record_commit(root: Path, building: Path) -> None:
    """Write ``handout.json``: the commit the edition was written from, which a hand-in
    carries (:mod:`churnlab.handin`)."""
    import json

    from churnlab import handin, train

    commit = train.git_commit(root) or "unknown"
    (building / handin.HANDOUT_FILE).write_text(json.dumps({"commit": commit}) + "\n")


def _under(path: Path, *folders: Path) -> bool:
    return any(folder == path or folder in path.parents for folder in folders)


def _replace(target: Path, built: Path) -> None:
    """Move ``built`` to ``target``; an old ``target`` is removed only once it is moved."""
    if not target.exists():
        built.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    target.rename(old / "previous")
    try:
        built.rename(target)
    except BaseException:
        (old / "previous").rename(target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "CODE_STUB",
    "TEXT_STUB",
    "Handout",
    "answer_sentences",
    "clear_regions",
    "leaked_answers",
    "project_files",
    "student_notebook",
    "uncommitted_files",
    "write_handout",
]
