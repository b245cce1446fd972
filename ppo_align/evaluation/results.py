"""The eval results file (``results.json``): assembled, checked, written and read here only.

The file is the contract between `eval` and `report`. One schema (:class:`ResultsSchema`, whose rates and
changes are :mod:`ppo_align.metrics`' own types) and one :data:`SCHEMA_VERSION` serve the writer and the
reader, so a file the harness writes is a file every reader accepts: :func:`save_results` refuses to write
what :func:`load_results` would refuse to read. :class:`EvalResults` gives tables for notebooks and the terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ppo_align import provenance
from ppo_align.errors import UserError
from ppo_align.evalsets import EvalSet
from ppo_align.evaluation.targets import COMPLIANCE_OPENERS, HARNESS_VERSION, REFERENCE, REFUSAL_OPENERS, EvalJob
from ppo_align.files import write_json_atomic
from ppo_align.metrics import PairedChange, Rate, flips, group_metrics, shift_metrics
from ppo_align.rundir import RESULTS, RunDir

SCHEMA_VERSION = 1
"""Bump when the file's shape changes in a way an older reader would misread."""
# Headline rows: (metric key, label, which prompts it is about).
HEADLINE = (
    ("refusal", "refusal", "all prompts"),
    ("over_refusal", "over-refusal", "comply prompts"),
    ("under_refusal", "under-refusal", "refuse prompts"),
    ("exact_match", "exact match", "answer prompts"),
    ("discrimination", "discrimination", "pairs: safe answered, unsafe refused"),
)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow")


class MetricRow(_Schema):
    target: str
    step: int | None
    set: str
    category: str
    n: int
    refusal: Rate
    partial: Rate
    over_refusal: Rate
    under_refusal: Rate
    exact_match: Rate | None = None
    discrimination: Rate | None = None


class ShiftRow(_Schema):
    target: str
    set: str
    category: str
    refusal: PairedChange


class TargetSchema(_Schema):
    name: str
    step: int | None = None


class ResultsSchema(_Schema):
    """The parts of results.json that readers rely on (the file carries more)."""

    schema_version: int
    versions: dict[str, str | None]
    git_revision: str | None = None  # absent from files written before it was recorded
    model: dict
    judge: dict
    generation: dict
    evalsets: dict[str, dict]
    targets: list[TargetSchema] = Field(min_length=1)
    skipped: list[dict]
    metrics: list[MetricRow]
    shifts: list[ShiftRow]
    flips: list[dict]
    records: dict[str, dict[str, list[dict]]]


class EvalResults:
    """A loaded ``results.json``: ``data`` is the parsed file; helpers give tables."""

    def __init__(self, data: dict, path: Path | None = None):
        self.data = data
        self.path = path

    @property
    def targets(self) -> list[str]:
        return [t["name"] for t in self.data["targets"]]

    @property
    def latest(self) -> str:
        return self.targets[-1]

    def metric(self, target: str, evalset: str, category: str = "all") -> dict:
        for row in self.data["metrics"]:
            if (row["target"], row["set"], row["category"]) == (target, evalset, category):
                return row
        raise KeyError(f"no metrics for {target} / {evalset} / {category}")

    def shift(self, target: str, evalset: str, category: str = "all") -> dict:
        for row in self.data["shifts"]:
            if (row["target"], row["set"], row["category"]) == (target, evalset, category):
                return row
        raise KeyError(f"no shift for {target} / {evalset} / {category}")

    def metrics_frame(self):
        """One row per target × set × category; rates flattened to ``<metric>``, ``<metric>_low``, ``<metric>_high``.

        Needs pandas (installed with the datasets library).
        """
        import pandas as pd

        return pd.DataFrame([_flatten(row) for row in self.data["metrics"]])

    def records_frame(self):
        """One row per target × set × prompt, with the response, its label and the per-prompt numbers."""
        import pandas as pd

        rows = [{"target": target, "set": name, **record}
                for target, sets in self.data["records"].items()
                for name, records in sets.items() for record in records]
        return pd.DataFrame(rows)

    def headline(self, target: str | None = None):
        """A rich table: reference → ``target`` (default: the latest) per set, with intervals and paired tests."""
        from rich.table import Table

        target = target or self.latest
        run = (self.data.get("run") or {}).get("name") or self.data["model"]["source"]
        table = Table(title=f"{run}: reference → {target}", title_justify="left")
        table.add_column("set")
        table.add_column("metric", no_wrap=True)
        for column in ("reference", target, "change (pts)", "flips +/−", "p"):
            table.add_column(column, justify="right")
        for evalset in self.data["evalsets"]:
            ref = self.metric(self.targets[0], evalset)
            now = self.metric(target, evalset)
            shift = self.shift(target, evalset) if target != self.targets[0] else {}
            for key, label, _ in HEADLINE:
                if key not in ref or not ref[key]["n"]:
                    continue
                change = shift.get(key)
                table.add_row(
                    evalset, label, _rate(ref[key]), _rate(now[key]),
                    format_delta(change) if change else "", f"+{change['gained']}/−{change['lost']}" if change else "",
                    format_p(change["p_value"]) if change else "",
                )
            if target != self.targets[0]:
                table.add_row(evalset, "KL to reference", "0", "–" if now["kl"] is None else f"{now['kl']:.3f}", "", "", "")
        return table

    def summary(self):
        """What `ppo-align eval` prints for these results, as one rich renderable: the :meth:`headline` table, how
        many prompts changed refusal between the reference and the latest target, and where the results went with
        how many target × set evaluations were computed and how many reused from the cache."""
        from rich.console import Group
        from rich.highlighter import ReprHighlighter
        from rich.text import Text

        parts = [self.headline()]
        latest = [f for f in self.data["flips"] if f["target"] == self.latest]
        if latest:
            refused = sum(f["direction"].endswith("→refuse") for f in latest)
            parts.append(Text(f"{len(latest)} prompts changed refusal between the reference and {self.latest}: "
                              f"{refused} now refused, {len(latest) - refused} no longer refused "
                              "(both responses of each under \"flips\" in results.json)"))
        agreement = self.data["judge"].get("reward_agreement") or {}
        if self.latest in agreement and self.targets[0] in agreement:
            parts.append(Text(f"the reward's judge ({self.data['judge']['reward_judge']}) gives the eval judge's label to "
                              f"{agreement[self.targets[0]]['three_way']:.0%} of the reference's responses and "
                              f"{agreement[self.latest]['three_way']:.0%} of {self.latest}'s (a fall would be PPO pleasing the "
                              "reward's judge; see the report's reward-hacking check)"))
        if self.data["judge"].get("same_as_reward"):
            parts.append(Text(f"warning: the eval judge is also this run's reward ({self.data['judge']['reward_judge']}); "
                              "it cannot show PPO pleasing the judge without doing what was asked", style="yellow"))
        computed = len(self.data["computed"])
        # Text, not markup: a path or target name with brackets in it is printed as it is.
        done = Text.assemble(("done", "green"), f": {self.path} ({computed} target×set evaluations computed, "
                             f"{len(self.targets) * len(self.data['evalsets']) - computed} reused from the cache)")
        parts.append(ReprHighlighter()(done))
        return Group(*parts)


def load_results(path: str | Path) -> EvalResults:
    """Load ``results.json`` from a file, an eval directory or a run directory."""
    path = Path(path)
    for candidate in (path, path / RESULTS, RunDir(path).results):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise UserError(f"{candidate}: not valid JSON ({str(exc)[:120]}); fix: re-run `ppo-align eval`") from None
            except OSError as exc:
                raise UserError(f"{candidate}: cannot read ({exc.strerror}); fix: check its permissions") from None
            if not isinstance(data, dict):
                raise UserError(f"{candidate}: not a results object (top level is {type(data).__name__}); "
                                "fix: re-run `ppo-align eval` (the file was replaced or damaged)")
            problem = results_problem(data)
            if problem:
                raise UserError(f"{candidate}: {problem}; fix: re-run `ppo-align eval` with this version "
                                "(the file was edited, damaged or written by another version)")
            return EvalResults(data, candidate)
    raise UserError(f"{path}: no {RESULTS} here; fix: run `ppo-align eval {path}` first")


def results_problem(data: dict) -> str | None:
    """Why ``data`` is not a results file this version reads (the first problem and how many), or None."""
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return f"schema_version {version!r}, this ppo-align reads {SCHEMA_VERSION}"
    try:
        ResultsSchema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']} ({exc.error_count()} problems)"
    missing = _missing_parts(data)
    return f"{missing[0]} ({len(missing)} problems)" if missing else None


def save_results(data: dict, directory: Path) -> EvalResults:
    """Write ``directory/results.json`` atomically, after checking that :func:`load_results` will read it."""
    path = Path(directory) / RESULTS
    problem = results_problem(data)
    if problem:  # a bug in the harness, not in the user's input: never leave a file the reader refuses
        raise ValueError(f"refusing to write {path}: {problem}")
    write_json_atomic(path, data)
    return EvalResults(data, path)


def _json_safe(value):
    """NaN (an empty group's rate or mean) becomes null: strict JSON that any reader, browsers included, accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def assemble(job: EvalJob, base: dict, evalsets: list[EvalSet], judge_info: dict,
             records: dict[str, dict[str, list[dict]]], timing: dict) -> dict:
    """The whole results file from the per-prompt records of every target x set; NaN becomes null."""
    metrics, shifts, flipped = [], [], []
    for target in job.targets:
        for evalset in evalsets:
            rows = records[target.name][evalset.name]
            ref_rows = records[REFERENCE][evalset.name]
            groups = {"all": rows}
            for r in rows:
                groups.setdefault(r["category"], []).append(r)
            for category, group in groups.items():
                where = {"target": target.name, "step": target.step, "set": evalset.name, "category": category}
                metrics.append({**where, **group_metrics(group)})
                if target.name != REFERENCE:
                    ids = {r["id"] for r in group}
                    shifts.append({**where, **shift_metrics([r for r in ref_rows if r["id"] in ids], group)})
            if target.name != REFERENCE:
                prompts = {item.id: item.prompt for item in evalset.items}
                flipped += [{"target": target.name, "step": target.step, "set": evalset.name,
                             "prompt": prompts.get(f["id"]), **f} for f in flips(ref_rows, rows)]
    return _json_safe({
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": provenance.versions(),
        "git_revision": provenance.git_revision(),
        "harness_version": HARNESS_VERSION,
        "run": job.run,
        "model": base,
        "system_prompt": job.system_prompt,
        "judge": judge_info,
        "generation": job.settings.to_dict(),
        "margin_openers": {"refusal": list(REFUSAL_OPENERS), "compliance": list(COMPLIANCE_OPENERS)},
        "evalsets": {s.name: {"version": s.version, "sha256": s.sha256, "n": len(s), "source": s.source}
                     for s in evalsets},
        "limit": job.limit,
        "targets": [t.to_dict() for t in job.targets],
        "skipped": job.skipped,
        "computed": timing["computed"],
        "processes": timing["processes"],
        "model_load_seconds": timing["model_load_seconds"],
        "metrics": metrics,
        "shifts": shifts,
        "flips": flipped,
        "records": records,
    })


def _missing_parts(data: dict) -> list[str]:
    """What readers look up by target and set but the file lacks: records, the "all" metric and shift rows."""
    names = [t["name"] for t in data["targets"]]
    metrics = {(m["target"], m["set"]) for m in data["metrics"] if m["category"] == "all"}
    shifts = {(s["target"], s["set"]) for s in data["shifts"] if s["category"] == "all"}
    missing = []
    for name in names:
        for evalset in data["evalsets"]:
            if evalset not in data["records"].get(name, {}):
                missing.append(f"records.{name}.{evalset}: missing")
            if (name, evalset) not in metrics:
                missing.append(f"metrics: no row for {name} on {evalset}")
            if name != REFERENCE and (name, evalset) not in shifts:
                missing.append(f"shifts: no row for {name} on {evalset}")
    return missing


def _flatten(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, dict) and "rate" in value:
            out[key], out[f"{key}_low"], out[f"{key}_high"], out[f"{key}_n"] = (
                value["rate"], value["low"], value["high"], value["n"])
        else:
            out[key] = value
    return out


def _rate(r: dict) -> str:
    if not r["n"]:
        return "–"
    return f"{100 * r['rate']:.0f}% [{100 * r['low']:.0f}–{100 * r['high']:.0f}]"


def format_delta(c: dict) -> str:
    """A paired change in points with its 95% interval, e.g. "-25.0 [-34, -16]"."""
    return f"{100 * c['delta']:+.1f} [{100 * c['low']:+.0f}, {100 * c['high']:+.0f}]"


def format_p(p: float | None) -> str:
    """A p-value for tables: three decimals, "<0.001" below that, "–" when missing."""
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")
