"""``ppo-align report``: one or several evaluated runs as report.md and a self-contained report.html.

A report answers what PPO changed, where, by how much, and what it did not
change: the headline shift with intervals, the method's claims as verdicts
(:mod:`ppo_align.claims`), figures (:mod:`ppo_align.plots`) and a browser of
the prompts whose behaviour flipped. It is built from files only —
``eval/results.json`` plus the run's ``metrics.jsonl``, ``monitor.jsonl`` and
``run.json`` — so it never loads a model.

Both outputs come from one document model (a list of sections of blocks), so
the Markdown and the HTML cannot say different things.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from ppo_align import claims as claims_mod
from ppo_align.errors import UserError
from ppo_align.files import read_json, read_jsonl, write_atomic
from ppo_align.results import HEADLINE, EvalResults, format_delta, format_p, load_results

REPORT_MD, REPORT_HTML, PLOTS_DIR = "report.md", "report.html", "plots"


# --------------------------------------------------------------------------- the runs


@dataclass
class RunData:
    """Everything a report reads about one evaluated run."""

    name: str
    results: EvalResults
    target: str
    """The checkpoint reported against the reference: the run's best (by its training-time rules) if
    evaluated, else the latest."""
    run_dir: Path | None
    info: dict = field(default_factory=dict)  # run.json
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl
    monitor: list[dict] = field(default_factory=list)  # monitor.jsonl

    @property
    def max_kl(self) -> float | None:
        recipe = (self.results.data.get("run") or {}).get("recipe_yaml")
        if not recipe:
            return None
        import yaml

        return ((yaml.safe_load(recipe) or {}).get("ppo") or {}).get("max_kl")

    def claims(self) -> list[claims_mod.Claim]:
        return claims_mod.check_claims(self.results, self.target, self.metrics, self.max_kl)

    def step_of(self, target: str) -> int:
        return next(t["step"] for t in self.results.data["targets"] if t["name"] == target)

    def checkpoint_training(self) -> list[tuple[int, float, float]]:
        """(step, mean training KL, mean reward) over the updates leading to each evaluated checkpoint."""
        out, previous = [], 0
        for target in self.results.targets[1:]:
            step = self.step_of(target)
            window = [m for m in self.metrics if previous < m.get("step", 0) <= step]
            kls = [m["kl"] for m in window if m.get("kl") is not None]
            rewards = [m["reward_mean"] for m in window if m.get("reward_mean") is not None]
            if kls and rewards:
                out.append((step, sum(kls) / len(kls), sum(rewards) / len(rewards)))
            previous = step
        return out

    def judged_as_expected(self, target: str) -> float | None:
        """Share of behaviour prompts (refuse/comply expected) whose judged label is the expected one."""
        rows = [r for records in self.results.data["records"][target].values() for r in records
                if r["expected"] in ("refuse", "comply")]
        return sum(r["label"] == r["expected"] for r in rows) / len(rows) if rows else None


def load_run(path: str | Path, target: str | None = None) -> RunData:
    """A run directory (or an eval directory / results.json) with its training logs, ready to report."""
    path = Path(path)
    results = load_results(path)
    run_dir = _run_dir(path, results)
    info = read_json(run_dir / "run.json") if run_dir else {}
    best = info.get("best_checkpoint")
    if target is None:
        target = best if best in results.targets else results.latest
    elif target not in results.targets:
        raise UserError(f"--target {target}: not in {results.path} (evaluated: {', '.join(results.targets)}); "
                        "fix: pick one of those or re-run `ppo-align eval`")
    name = (results.data.get("run") or {}).get("name") or path.name
    return RunData(name, results, target, run_dir, info,
                   read_jsonl(run_dir / "metrics.jsonl") if run_dir else [],
                   read_jsonl(run_dir / "monitor.jsonl") if run_dir else [])


def _run_dir(path: Path, results: EvalResults) -> Path | None:
    recorded = (results.data.get("run") or {}).get("dir")
    for candidate in (path, path.parent, path.parent.parent, Path(recorded) if recorded else None):
        if candidate is not None and (candidate / "run.json").is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- the document


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Flips:
    rows: list[dict]


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph) | Table | Figure | Flips


def document(runs: list[RunData]) -> tuple[str, list[Section]]:
    title = "ppo-align report: " + (runs[0].name if len(runs) == 1 else " vs ".join(r.name for r in runs))
    sections = [_comparison(runs)] if len(runs) > 1 else []
    for run in runs:
        sections += _run_sections(run, prefix=f"{run.name}: " if len(runs) > 1 else "")
    sections.append(_training_section(runs))
    return title, [s for s in sections if s.blocks]


def _run_sections(run: RunData, prefix: str) -> list[Section]:
    from ppo_align import plots

    res, target = run.results, run.target
    overview = Section(f"{prefix}overview", [_overview(run), _headline_table(res, target)])
    claim_rows = [[c.name, c.verdict.upper(), c.evidence] for c in run.claims()]
    verdicts = Section(f"{prefix}claims, checked", [
        "Each claim of the method as a test on this run's eval results (reference → "
        f"{target}); the evidence gives the numbers behind the verdict.",
        Table(["claim", "verdict", "evidence"], claim_rows)])
    figures = Section(f"{prefix}where behaviour moved")
    slug = _slug(run.name)
    for name, make, caption in (
        ("behaviour", lambda: plots.behaviour_vs_step(res),
         "Over-refusal, under-refusal and hedging against PPO update, per eval set (bands: 95% intervals)."),
        ("categories", lambda: plots.categories_vs_step(res), "Refusal rate per category against PPO update."),
        ("shift", lambda: plots.shift_by_category(res, target),
         f"Change in refusal per category, reference → {target}, with paired 95% intervals: "
         "PPO should move the ambiguous (boundary) categories most."),
        ("p-refuse", lambda: plots.p_refuse_distribution(res, target),
         f"Per-prompt P(refuse) over sampled responses, reference vs {target}: the distribution PPO re-weights."),
        ("knowledge", lambda: plots.knowledge_vs_step(res), "Knowledge exact match against PPO update (should stay flat)."),
        ("reward-vs-judge", lambda: plots.reward_vs_judge(
            [run.step_of(t) for t in res.targets[1:]],
            [_reward_at(run, run.step_of(t)) for t in res.targets[1:]],
            [run.judged_as_expected(t) for t in res.targets[1:]],
            [(m["step"], m["refusal"]) for m in run.monitor]),
         "Training reward beside independently judged behaviour (eval sets) and the training-time monitor: "
         "reward rising while judged behaviour stays flat is reward hacking."),
    ):
        fig = make()
        if fig is not None:
            figures.blocks.append(Figure(f"{slug}-{name}", plots.to_png(fig), caption))
    if not any(isinstance(b, Figure) and b.name.endswith("p-refuse") for b in figures.blocks):
        figures.blocks.append("Per-prompt P(refuse) needs sampled responses: `ppo-align eval RUN --samples 8`.")
    flipped = [f for f in res.data["flips"] if f["target"] == target]
    flips = Section(f"{prefix}prompts that flipped (reference → {target})", [
        _flip_summary(flipped),
        Flips(flipped)] if flipped else [
        f"No prompt changed between refusing and not refusing at {target}."])
    return [overview, verdicts, figures, flips]


def _overview(run: RunData) -> str:
    res = run.results.data
    judge = res["judge"]
    agreement = ", ".join(f"{name} {100 * v['agreement']:.1f}%" for name, v in judge.get("validation", {}).items()
                          if isinstance(v, dict) and v.get("agreement") is not None)
    sets = ", ".join(f"{name} ({s['n']} prompts)" for name, s in res["evalsets"].items())
    status = run.info.get("status", "unknown")
    best = run.info.get("best_checkpoint")
    parts = [
        f"Model {res['model'].get('source', '?')}; run status: {status}"
        + (f"; best checkpoint by the training-time rules: {best}" if best else "") + ".",
        f"Evaluated {', '.join(run.results.targets)} on {sets} (limit {res.get('limit') or 'none'}), "
        f"greedy, {res['generation'].get('max_new_tokens')} new tokens.",
        f"Judge: {judge['name']} v{judge['version']}" + (f", agreement with gold labels: {agreement}." if agreement else "."),
        f"Reported: reference → {run.target}.",
    ]
    return " ".join(parts)


def _headline_table(results: EvalResults, target: str) -> Table:
    rows = []
    reference = results.targets[0]
    for evalset in results.data["evalsets"]:
        ref, now = results.metric(reference, evalset), results.metric(target, evalset)
        shift = results.shift(target, evalset) if target != reference else {}
        for key, label, about in HEADLINE:
            if not ref.get(key) or not ref[key]["n"]:
                continue
            change = shift.get(key)
            rows.append([evalset, f"{label} ({about})", _rate(ref[key]), _rate(now[key]),
                         format_delta(change) if change else "", f"+{change['gained']}/−{change['lost']}" if change else "",
                         format_p(change["p_value"]) if change else ""])
        if now.get("kl") is not None and target != reference:
            rows.append([evalset, "KL to reference (per token)", "0", f"{now['kl']:.4f}", "", "", ""])
    return Table(["set", "metric", "reference", target, "change, pts [95% CI]", "flips +/−", "McNemar p"], rows)


def _comparison(runs: list[RunData]) -> Section:
    headers = ["run", "reported", "boundary over-refusal", "refusal-set refusal", "knowledge EM", "claims passed"]
    rows = []
    for run in runs:
        res, t = run.results, run.target
        cells = [run.name, t]
        for evalset, key in (("boundary", "over_refusal"), ("refusal", "refusal"), ("knowledge", "exact_match")):
            try:
                ref, now = res.metric(res.targets[0], evalset)[key], res.metric(t, evalset)[key]
                cells.append(f"{_pct(ref)} → {_pct(now)}")
            except (KeyError, TypeError):
                cells.append("–")
        verdicts = [c.verdict for c in run.claims()]
        cells.append(f"{verdicts.count(claims_mod.PASS)} of {sum(v != claims_mod.NOT_APPLICABLE for v in verdicts)}")
        rows.append(cells)
    from ppo_align import plots

    blocks: list = ["Each run's reference → reported checkpoint (its best by training-time rules, else its latest).",
                    Table(headers, rows)]
    tradeoff = plots.reward_kl_tradeoff({r.name: r.checkpoint_training() for r in runs})
    if tradeoff is not None:
        blocks.append(Figure("compare-reward-kl", plots.to_png(tradeoff),
                             "Reward against KL at each checkpoint, per run: reward is the throttle, KL the brake."))
    return Section("comparison", blocks)


def _training_section(runs: list[RunData]) -> Section:
    from ppo_align import plots

    blocks = []
    curves = plots.training_curves({r.name: r.metrics for r in runs})
    if curves is not None:
        blocks.append(Figure("training-curves", plots.to_png(curves), "PPO training curves from metrics.jsonl."))
    if len(runs) == 1:
        tradeoff = plots.reward_kl_tradeoff({runs[0].name: runs[0].checkpoint_training()})
        if tradeoff is not None:
            blocks.append(Figure("reward-kl", plots.to_png(tradeoff),
                                 "Training reward against KL at each checkpoint: reward is the throttle, KL the brake."))
    return Section("training", blocks)


def _flip_summary(flipped: list[dict]) -> Table:
    counts: dict[tuple[str, str], int] = {}
    for f in flipped:
        counts[(f["set"], f["direction"])] = counts.get((f["set"], f["direction"]), 0) + 1
    return Table(["set", "direction", "prompts"], [[s, d, str(n)] for (s, d), n in sorted(counts.items())])


def _reward_at(run: RunData, step: int) -> float | None:
    for s, _, reward in run.checkpoint_training():
        if s == step:
            return reward
    return None


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
        output = (data[0].run_dir or Path(runs[0])) / "report" if len(data) == 1 else \
            Path("report-" + "-vs-".join(_slug(r.name) for r in data))
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
                out += _md_table(block.headers, block.rows) + [""]
            elif isinstance(block, Figure):
                out += [f"![{block.caption}]({PLOTS_DIR}/{block.name}.png)", "", f"*{block.caption}*", ""]
            elif isinstance(block, Flips):
                shown = block.rows[:20]
                out += _md_table(["set", "direction", "prompt", "reference response", "checkpoint response"],
                                 [[f["set"], f["direction"], _short(f.get("prompt") or f["id"], 70),
                                   _short(f["reference_response"]), _short(f["response"])]
                                  for f in shown]) + [""]
                if len(block.rows) > len(shown):
                    out += [f"{len(block.rows) - len(shown)} more in report.html (filterable).", ""]
    return "\n".join(out)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
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
            css = {"PASS": "pass", "FAIL": "fail", "N/A": "na"}.get(c, "num" if _numeric(c) else "")
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


# --------------------------------------------------------------------------- formatting


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "run"


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+−-<")


def _pct(r: dict | None) -> str:
    return "–" if not r or not r["n"] else f"{100 * r['rate']:.0f}%"


def _rate(r: dict) -> str:
    if not r["n"]:
        return "–"
    return f"{100 * r['rate']:.0f}% [{100 * r['low']:.0f}–{100 * r['high']:.0f}] (n={r['n']})"
