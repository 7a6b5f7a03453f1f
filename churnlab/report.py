"""The workbook's report: ONE self-contained HTML file that opens offline.

"Your work" first (:mod:`churnlab.work`: the student's name, each task's verdict from the
registry, each answer), embedded as JSON too and written beside the page as
``workbook.json``. Then a summary read from the registry (versions and verdicts, who holds
which stage, the promotion history) and from the executed ``05_verify`` notebook (both
``/health`` answers), then every executed notebook with its code folded. Styles are inlined
and plots are data URIs: the page loads nothing from the network (no require.js, no
MathJax, no fonts).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from churnlab import store, work
from churnlab.runs import WorkbookRun

#: the tag of the 05_verify cell whose output is ``{"staging": {...}, "production": {...}}``
HEALTH_TAG = "health"

_SECTION_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block header -%}{%- endblock header -%}
{%- block body_header -%}{%- endblock body_header -%}
{%- block body_footer -%}{%- endblock body_footer -%}
{%- block footer -%}{%- endblock footer -%}
{% block input_group -%}
<details class="wb-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
"""

_CSS = """
body.jp-Notebook { max-width: 1080px; margin: 0 auto; padding: 1.5rem; }
.wb-summary { font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.45; }
.wb-summary h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
.wb-summary h2 { font-size: 1.15rem; margin: 1.2rem 0 .4rem; }
.wb-summary table { border-collapse: collapse; margin: .2rem 0 .6rem; }
.wb-summary th, .wb-summary td { border: 1px solid #ccc; padding: .2rem .55rem; text-align: left;
  vertical-align: top; }
.wb-summary th { background: #f2f2f2; }
.wb-summary td { white-space: nowrap; }
.wb-summary td:last-child { white-space: normal; }
.wb-summary a { color: #1565c0; }
.wb-summary pre { background: #f7f7f7; padding: .5rem; margin: .2rem 0; white-space: pre-wrap; }
.wb-ok { color: #2e7d32; font-weight: 600; }
.wb-bad { color: #c62828; font-weight: 600; }
.wb-failure { border: 2px solid #c62828; padding: .5rem .8rem; background: #fdecea; }
.wb-health { display: flex; gap: 1rem; flex-wrap: wrap; }
.wb-health > div { flex: 1 1 300px; }
.wb-notebook { border-top: 3px solid #1565c0; margin-top: 2.5rem; padding-top: .5rem; }
.wb-notebook > .wb-label { font: 600 12px system-ui, sans-serif; color: #1565c0;
  text-transform: uppercase; letter-spacing: .06em; }
a.anchor-link, .jp-Collapser { display: none; }
.jp-InputArea { overflow: hidden; }
.wb-row { display: flex; gap: 2.5rem; flex-wrap: wrap; align-items: flex-start; }
details.wb-code > summary { cursor: pointer; color: #666; font: 12px monospace; }
details.wb-code[open] > summary { margin-bottom: .3rem; }
.wb-work { border-bottom: 3px solid #1565c0; padding-bottom: 1rem; margin-bottom: 1.5rem; }
.wb-work td { white-space: normal; }
.wb-work h3 { font-size: 1rem; margin: .9rem 0 .2rem; }
.wb-answer { white-space: pre-wrap; background: #f7f7f7; padding: .4rem .6rem; }
.wb-words { color: #666; font-size: 12px; margin: .1rem 0; }
"""


# ---------------------------------------------------------------------------- checking
_LOADING_TAGS = r"script|img|iframe|link|source|video|audio|embed|object|track|input|frame"
_ATTRIBUTE = re.compile(
    r"""\b(?:src|href|data|srcset|poster|action)\s*=\s*["']?\s*([^"'\s>]+)""", re.I
)


def network_references(page: str) -> list[str]:
    """Everything in ``page`` that a browser would fetch from the network.

    Attributes of loading elements (``<script src>``, ``<img src>``, ``<link href>``, ...)
    and CSS ``url()``/``@import`` pointing at ``http(s)://`` or ``//``. Plain ``<a href>``
    links are not loads and are allowed.
    """
    found = []
    remote = re.compile(r"^(?:https?:)?//", re.I)
    for tag in re.finditer(rf"<(?:{_LOADING_TAGS})\b[^>]*>", page, re.I):
        for value in _ATTRIBUTE.findall(tag.group(0)):
            if remote.match(value):
                found.append(f"{tag.group(0)[:80]}")
    css = "\n".join(re.findall(r"<style[^>]*>(.*?)</style>", page, re.I | re.S))
    css += "\n" + "\n".join(re.findall(r"""style\s*=\s*"([^"]*)\"""", page, re.I))
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    imports = re.compile(r"""@import\s+(?:url\()?\s*['"]?([^'")\s;]+)[^;]*;?""", re.I)
    for value in imports.findall(css):
        found.append(f"@import {value[:80]}")
    for value in re.findall(r"""url\(\s*['"]?([^'")\s]+)""", imports.sub("", css), re.I):
        if remote.match(value):
            found.append(f"url({value[:80]})")
    return found


# ---------------------------------------------------------------------------- pieces
def _lab_css() -> str:
    from nbconvert.exporters.templateexporter import TemplateExporter

    for base in TemplateExporter().template_paths:
        folder = Path(base) / "lab" / "static"
        if (folder / "index.css").is_file():
            css = (folder / "index.css").read_text() + (folder / "theme-light.css").read_text()
            return re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    return ""  # nbconvert without its lab template: the page still works, plainer


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"workbook_section.html.j2": _SECTION_TEMPLATE})],
        template_file="workbook_section.html.j2",
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )


def _notebook_html(path: Path, exporter=None) -> str:
    """One executed notebook as an HTML fragment (code folded, images as data URIs)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    exporter = exporter or _exporter()
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    return body


def health_answers(path: Path) -> dict[str, Any] | None:
    """The ``/health`` answers printed by the cell tagged ``health`` of an executed notebook."""
    import nbformat

    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if HEALTH_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        text = "".join(
            o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
        )
        try:
            answers = json.loads(text)
        except ValueError:
            return None
        return answers if isinstance(answers, dict) else None
    return None


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    cls = {"passed": "wb-ok", "ok": "wb-ok", "failed": "wb-bad", "FAILED": "wb-bad"}.get(text)
    escaped = html.escape(text)
    return f'<span class="{cls}">{escaped}</span>' if cls else escaped


def _registry_summary(model_name: str) -> dict[str, Any]:
    """Versions, stage holders and history of ``model_name`` as plain data (empty if none)."""
    from churnlab import tables
    from churnlab.errors import InputError
    from churnlab.registry import PRODUCTION, STAGING, Registry

    registry = Registry(model_name)
    try:
        registry.model()
    except InputError:
        return {"versions": [], "holders": {}, "history": []}
    versions = tables.versions_table(registry).reset_index().to_dict("records")
    return {
        "versions": versions,
        "holders": {STAGING: registry.holder(STAGING), PRODUCTION: registry.holder(PRODUCTION)},
        "history": tables.history_table(registry).to_dict("records"),
    }


def _summary_html(run: WorkbookRun, facts: dict[str, Any], health: dict[str, Any] | None) -> str:
    """The report's top: how the run went, then what the registry says."""
    parts = ['<section id="summary" class="wb-summary">', "<h1>churnlab workbook</h1>"]
    parts.append(f'<p class="wb-kind">{html.escape(work.KINDS.get(run.kind, run.kind))}</p>')
    parts.append(
        f"<p>Registry: {html.escape(store.redact(run.registry_label))}, model "
        f"{html.escape(run.model_name)}."
    )
    if run.parameters:
        shown = ", ".join(f"{k} = {v!r}" for k, v in sorted(run.parameters.items()))
        parts.append(f" Parameters: <code>{html.escape(shown)}</code>.")
    parts.append("</p>")
    links = " · ".join(f'<a href="#nb-{r.name}">{r.name}</a>' for r in run.runs)
    parts.append(f'<p class="wb-nav">Jump to: {links or "no notebook ran"}</p>')
    failed = run.failed
    if failed is not None:
        parts.append(
            f'<p class="wb-failure">Stopped: {html.escape(store.redact(failed.error))}</p>'
        )
    ran = {r.name: r for r in run.runs}
    rows = []
    for name in run.notebooks:
        r = ran.get(name)
        rows.append(
            {
                "notebook": name,
                "status": r.status if r else "not run",
                "seconds": f"{r.seconds:.1f}" if r and r.status in ("ok", "failed") else "",
                "note": store.redact(r.error) if r and r.status != "failed" else "",
            }
        )
    holders = facts.get("holders", {})
    stage_rows = [
        {"stage": alias, "version": "-" if v is None else f"v{v}"} for alias, v in holders.items()
    ]
    parts.append(
        '<div class="wb-row"><div><h2>Notebooks</h2>'
        + _table(rows, ["notebook", "status", "seconds", "note"])
        + "</div><div><h2>Stages</h2>"
        + _table(stage_rows, ["stage", "version"])
        + "</div></div>"
    )
    parts.append(
        "<h2>Versions and gate verdicts</h2>"
        + _table(
            facts.get("versions", []),
            [
                "version",
                "estimator",
                "accuracy",
                "roc_auc",
                "gate",
                "smoke",
                "holds",
                "description",
            ],
        )
    )
    parts.append(
        "<h2>Stage history</h2>"
        + _table(
            facts.get("history", []),
            ["time", "actor", "action", "alias", "from", "to", "override", "reason"],
        )
    )
    parts.append('<h2>/health answers</h2><div class="wb-health">')
    if health:
        for stage, answer in sorted(health.items(), key=lambda kv: kv[0] != "staging"):
            text = json.dumps(answer, indent=2, sort_keys=True)
            parts.append(f"<div><b>{html.escape(stage)}</b><pre>{html.escape(text)}</pre></div>")
    else:
        parts.append("<p>not recorded (05_verify did not run to its health cell)</p>")
    parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def build_report(run: WorkbookRun, *, out: Path) -> Path:
    """Write the report of ``run`` (on its model) to ``out``; return it.

    "Your work" opens the page; the same summary goes beside ``out`` as JSON
    (``workbook.json`` for ``workbook.html``). Written to a temporary file and renamed, so
    a reader never sees half a report.
    """
    model_name = run.model_name
    summary = work.work_summary(
        run.parameters,
        [r.path for r in run.runs],
        model_name=model_name,
        kind=run.kind,
        registry_label=run.registry_label,
    )
    facts = _registry_summary(model_name)
    verify = next((r for r in run.runs if r.name == "05_verify"), None)
    health = health_answers(verify.path) if verify else None
    sections = []
    exporter = _exporter()
    for r in run.runs:
        if not r.path.is_file():
            continue
        sections.append(
            f'<section id="nb-{r.name}" class="wb-notebook"><div class="wb-label">'
            f"notebook {html.escape(r.name)}.ipynb</div>{_notebook_html(r.path, exporter)}</section>"
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1.0">\n'
        "<title>churnlab workbook</title>\n"
        f"<style>{_lab_css()}\n{_CSS}</style>\n</head>\n"
        '<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">\n'
        f"<main>\n{work.work_html(summary)}\n{_summary_html(run, facts, health)}\n"
        f"{''.join(sections)}\n</main>\n{work.embed(summary)}\n</body>\n</html>\n"
    )
    problems = network_references(page)
    if problems:  # never hand out a report that would reach for the network
        raise RuntimeError(f"the report would load from the network: {problems[:3]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    work.write_json(summary, out.with_suffix(".json"))
    return out


def remove(out: Path) -> None:
    """Remove a report and the JSON beside it (a stale partial report, say), if there."""
    out.unlink(missing_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)


__all__ = ["build_report", "health_answers", "network_references", "remove"]
