"""The eval results file (``results.json``) as an object: tables for notebooks and the terminal.

The file is the contract between `eval` and `report`; this module only reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ppo_align.errors import UserError

RESULTS = "results.json"
SUPPORTED_SCHEMA = 1
# Headline rows: (metric key, label, which prompts it is about).
HEADLINE = (
    ("refusal", "refusal", "all prompts"),
    ("over_refusal", "over-refusal", "comply prompts"),
    ("under_refusal", "under-refusal", "refuse prompts"),
    ("exact_match", "exact match", "answer prompts"),
)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow")


class RateSchema(_Schema):
    k: int
    n: int
    rate: float | None
    low: float | None
    high: float | None


class MetricRow(_Schema):
    target: str
    step: int | None
    set: str
    category: str
    n: int
    refusal: RateSchema
    partial: RateSchema
    over_refusal: RateSchema
    under_refusal: RateSchema
    exact_match: RateSchema | None = None


class ChangeSchema(_Schema):
    n: int
    gained: int
    lost: int
    delta: float | None
    p_value: float | None


class ShiftRow(_Schema):
    target: str
    set: str
    category: str
    refusal: ChangeSchema


class TargetSchema(_Schema):
    name: str
    step: int | None = None


class ResultsSchema(_Schema):
    """The parts of results.json that readers rely on (the file carries more)."""

    schema_version: int
    versions: dict[str, str | None]
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


def load_results(path: str | Path) -> EvalResults:
    """Load ``results.json`` from a file, an eval directory or a run directory."""
    path = Path(path)
    for candidate in (path, path / RESULTS, path / "eval" / RESULTS):
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
            version = data.get("schema_version")
            if version != SUPPORTED_SCHEMA:
                raise UserError(f"{candidate}: schema_version {version!r}, this ppo-align reads {SUPPORTED_SCHEMA}; "
                                "fix: re-run `ppo-align eval` with this version")
            try:
                ResultsSchema.model_validate(data)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise UserError(f"{candidate}: {where}: {first['msg']} ({exc.error_count()} problems); "
                                "fix: re-run `ppo-align eval` (the file was edited or damaged)") from None
            missing = _missing_parts(data)
            if missing:
                raise UserError(f"{candidate}: {missing[0]} ({len(missing)} problems); "
                                "fix: re-run `ppo-align eval` (the file was edited or damaged)")
            return EvalResults(data, candidate)
    raise UserError(f"{path}: no {RESULTS} here; fix: run `ppo-align eval {path}` first")


def _missing_parts(data: dict) -> list[str]:
    """What readers look up by target and set but the file lacks: records, the "all" metric and shift rows."""
    names = [t["name"] for t in data["targets"]]
    metrics = {(m["target"], m["set"]) for m in data["metrics"] if m["category"] == "all"}
    shifts = {(s["target"], s["set"]) for s in data["shifts"] if s["category"] == "all"}
    missing = []
    for i, name in enumerate(names):
        for evalset in data["evalsets"]:
            if evalset not in data["records"].get(name, {}):
                missing.append(f"records.{name}.{evalset}: missing")
            if (name, evalset) not in metrics:
                missing.append(f"metrics: no row for {name} on {evalset}")
            if i and (name, evalset) not in shifts:
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
