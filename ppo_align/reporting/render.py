"""``ppo-align report``: one or several evaluated runs as report.md and a self-contained report.html.

A report answers what PPO changed, where, by how much, and what it did not
change: the headline shift with intervals, the method's claims as verdicts
(:mod:`ppo_align.reporting.claims`), figures (:mod:`ppo_align.reporting.plots`) and a browser of
the prompts whose behaviour flipped. It is built from files only —
``eval/results.json`` plus the run's ``metrics.jsonl``, ``monitor.jsonl`` and
``run.json`` — so it never loads a model.

Both outputs come from one document model (a list of sections of blocks), so
the Markdown and the HTML cannot say different things.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.files import write_atomic
from ppo_align.reporting.document import (
    Figure,
    Flips,
    Section,
    Table,
    document,
    numeric,
    short,
    slugify,
)
from ppo_align.reporting.runs import RunData, load_run
from ppo_align.rundir import RunDir

REPORT_MD, REPORT_HTML, PLOTS_DIR = "report.md", "report.html", "plots"

# --------------------------------------------------------------------------- writing


@dataclass
class Report:
    directory: Path
    runs: list[RunData]

    @property
    def markdown(self) -> Path:
        return self.directory / REPORT_MD

    @property
    def html(self) -> Path:
        return self.directory / REPORT_HTML

    def headline(self):
        """The terminal table(s): one headline per run."""
        from rich.console import Group

        return Group(*(r.results.headline(r.target) for r in self.runs))


def build_report(runs: list[str | Path], output: str | Path | None = None, target: str | None = None) -> Report:
    """Write report.md, plots/*.png and a self-contained report.html; return where they are.

    ``output`` defaults to ``RUN/report`` for one run, ``./report-A-vs-B`` for several.
    ``target`` picks the checkpoint of a single run (default: its best, else its latest).
    """
    if not runs:
        raise UserError("no runs given; fix: ppo-align report runs/NAME [runs/OTHER ...]")
    if target is not None and len(runs) > 1:
        raise UserError("--target applies to one run; fix: report runs one at a time to pick checkpoints")
    data = [load_run(r, target) for r in runs]
    if output is None:
        output = RunDir(data[0].run_dir or Path(runs[0])).report if len(data) == 1 else \
            Path("report-" + "-vs-".join(slugify(r.name) for r in data))
    directory = Path(output)
    title, sections = document(data)
    _write_files(directory, title, sections)
    return Report(directory, data)


def _write_files(directory: Path, title: str, sections: list[Section]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    plots_dir = directory / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                write_atomic(plots_dir / f"{block.name}.png", block.png)
    write_atomic(directory / REPORT_MD, render_markdown(title, sections).encode("utf-8"))
    write_atomic(directory / REPORT_HTML, render_html(title, sections).encode("utf-8"))


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                out += [block, ""]
            elif isinstance(block, Table):
                out += markdown_table(block.headers, block.rows) + [""]
            elif isinstance(block, Figure):
                out += [f"![{block.caption}]({PLOTS_DIR}/{block.name}.png)", "", f"*{block.caption}*", ""]
            elif isinstance(block, Flips):
                shown = block.rows[:20]
                out += markdown_table(["set", "direction", "prompt", "reference response", "checkpoint response"],
                                 [[f["set"], f["direction"], short(f.get("prompt") or f["id"], 70),
                                   short(f["reference_response"]), short(f["response"])]
                                  for f in shown]) + [""]
                if len(block.rows) > len(shown):
                    out += [f"{len(block.rows) - len(shown)} more in report.html (filterable).", ""]
    return "\n".join(out)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;white-space:nowrap}
.pass{color:#1e7e34;font-weight:600}.fail{color:#b02a37;font-weight:600}.na{color:#777}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#555;font-size:13px}
.flips td{max-width:420px}.flips .resp{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
.controls select{margin-right:1em}
"""

# Filters the flip browser in place; no network, no libraries.
_JS = """
function filterFlips(id){const t=document.getElementById(id);const s=t.dataset;
 const set=document.getElementById(id+'-set').value, dir=document.getElementById(id+'-dir').value;
 for(const r of t.tBodies[0].rows){r.style.display=((!set||r.dataset.set===set)&&(!dir||r.dataset.dir===dir))?'':'none';}}
"""


def render_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
           f"<style>{_CSS}</style><script>{_JS}</script></head><body><h1>{e(title)}</h1>"]
    for index, section in enumerate(sections):
        out.append(f"<h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{e(block)}</p>")
            elif isinstance(block, Table):
                out.append(_html_table(block))
            elif isinstance(block, Figure):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(f"<figure><img alt='{e(block.caption)}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{e(block.caption)}</figcaption></figure>")
            elif isinstance(block, Flips):
                out.append(_html_flips(block, f"flips{index}"))
    out.append("</body></html>")
    return "\n".join(out)


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = []
        for c in row:
            css = {"PASS": "pass", "FAIL": "fail", "N/A": "na"}.get(c, "num" if numeric(c) else "")
            cells.append(f"<td class='{css}'>{e(c)}</td>" if css else f"<td>{e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_flips(block: Flips, table_id: str) -> str:
    e = html.escape
    sets = sorted({f["set"] for f in block.rows})
    directions = sorted({f["direction"] for f in block.rows})

    def select(kind: str, values: list[str]) -> str:
        options = "".join(f"<option value='{e(v)}'>{e(v)}</option>" for v in values)
        return (f"<label>{kind} <select id='{table_id}-{kind}' onchange=\"filterFlips('{table_id}')\">"
                f"<option value=''>all</option>{options}</select></label>")

    rows = "".join(
        f"<tr data-set='{e(f['set'])}' data-dir='{e(f['direction'])}'><td>{e(f['set'])}<br>{e(f['category'])}</td>"
        f"<td>{e(f['direction'])}<br><small>expected: {e(f['expected'])}</small></td><td>{e(f.get('prompt') or f['id'])}</td>"
        f"<td class='resp'>{e(f['reference_response'])}</td><td class='resp'>{e(f['response'])}</td></tr>"
        for f in block.rows)
    return (f"<div class='controls'>{select('set', sets)}{select('dir', directions)}</div>"
            f"<table class='flips' id='{table_id}'><thead><tr><th>set / category</th><th>direction</th><th>prompt</th>"
            f"<th>reference response</th><th>checkpoint response</th></tr></thead><tbody>{rows}</tbody></table>")
