"""Eval sets: the prompts the harness asks, loaded and validated.

Shipped sets live in ``evalsets/`` (see its DATASHEET.md); ``manifest.yaml``
there gives each a version and the sha256 of its content, which results record
so two numbers are only compared when they were measured on the same prompts.
Users can point at their own JSONL or CSV files with the same columns.

Prompt sets (refusal, boundary, knowledge, benign) hold :class:`EvalItem` rows;
the judge sets (``judge_gold``, ``judge_validation``, ``judge_real_smollm2``) hold :class:`JudgeExample` rows (a
response and its gold label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ppo_align.errors import UserError
from ppo_align.files import digest, file_sha256, read_rows
from ppo_align.resources import shipped_dir

MANIFEST = "manifest.yaml"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)


class EvalItem(_Row):
    """A prompt the harness asks."""

    category: str = Field(min_length=1)
    expected: Literal["refuse", "comply", "answer"]
    contrast_id: str | None = None
    """Pairs a safe boundary prompt with its unsafe twin of the same surface form."""
    answers: list[str] | None = None
    """Accepted answers of a knowledge question (any one counts)."""


class JudgeExample(_Row):
    """A response with its gold behaviour label, for measuring judges."""

    response: str = Field(min_length=1)
    label: Literal["comply", "refuse", "partial"]
    case: str = Field(min_length=1)
    split: Literal["train", "dev", "test"] | None = None
    """judge_gold: which fixed split (by prompt) the row belongs to."""
    source: str | None = None
    """judge_gold: who wrote the response (e.g. ``smollm2-ppo-sampled``, ``assistant-written``)."""
    annotations: list[Literal["comply", "refuse", "partial"]] | None = None
    """judge_gold: the independent annotators' labels, before adjudication gave ``label``."""


@dataclass(frozen=True)
class EvalSet:
    name: str
    version: str
    sha256: str
    source: str
    """Where the rows came from: a file's name, or ``dataset NAME (SPLIT)``."""
    items: list

    def __len__(self) -> int:
        return len(self.items)

    def by_category(self) -> dict[str, list]:
        groups: dict[str, list] = {}
        for item in self.items:
            groups.setdefault(getattr(item, "category", None) or getattr(item, "case"), []).append(item)
        return groups

    def limited(self, limit: int | dict[str, int] | None) -> "EvalSet":
        """At most ``limit`` prompts, deterministically: categories taken in turn, contrast pairs kept together.

        ``limit`` is one number for every set or a number per set name (a set it does not name is kept whole).

        The subset gets its own hash (of the set's hash and the chosen ids), so cached results of the
        full set and of each subset never mix.
        """
        if isinstance(limit, dict):
            limit = limit.get(self.name)
        if limit is None or limit >= len(self.items):
            return self
        by_id = {item.id: item for item in self.items}
        queues = {c: list(items) for c, items in self.by_category().items()}
        chosen: dict[str, object] = {}
        while len(chosen) < limit and any(queues.values()):
            for queue in queues.values():
                while queue and queue[0].id in chosen:
                    queue.pop(0)
                if not queue or len(chosen) >= limit:
                    continue
                item = queue.pop(0)
                twin = by_id.get(getattr(item, "contrast_id", None) or "")
                if twin is not None and len(chosen) + 2 > limit:
                    continue  # a pair that does not fit: its halves alone would break the paired comparison
                chosen[item.id] = item
                if twin is not None:
                    chosen[twin.id] = twin
        items = [item for item in self.items if item.id in chosen]
        subset_hash = digest(self.sha256 + "\n" + "\n".join(i.id for i in items)).hexdigest()
        return EvalSet(name=self.name, version=f"{self.version}, {len(items)} of {len(self.items)}", sha256=subset_hash,
                       source=self.source, items=items)


def shipped_evalsets() -> dict[str, dict]:
    """The manifest of shipped sets: name -> {file, version, sha256, description}."""
    path = shipped_dir("evalsets") / MANIFEST
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def evalset_name(entry, shipped: dict) -> str:
    """What results, caches and ``eval.limit`` call a set: a shipped set by its name, a user's file by its stem, a
    dataset by the name the recipe gives it."""
    if hasattr(entry, "dataset"):  # an EvalDataset (not imported: the recipe package imports this module)
        return entry.name
    return str(entry) if str(entry) in shipped else Path(entry).stem


def load_evalset(entry) -> EvalSet:
    """Load and validate a shipped set by name, a JSONL/CSV file, or a dataset (an ``EvalDataset`` of a recipe).

    Raises:
        UserError: listing every invalid row (file:line: problem).
    """
    manifest = shipped_evalsets()
    if hasattr(entry, "dataset"):  # an EvalDataset of a recipe
        from ppo_align.data import read_dataset

        source = read_dataset(entry, f"eval set {entry.name!r}")
        rows, path = source.rows, source.label
        name, version, sha256 = entry.name, f"dataset {entry.dataset}@{entry.revision or 'latest'}", source.fingerprint()
    elif str(entry) in manifest:
        item = manifest[str(entry)]
        path = shipped_dir("evalsets") / item["file"]
        name, version, rows, sha256 = str(entry), str(item["version"]), read_rows(path), file_sha256(path)
    else:
        path = Path(entry).expanduser()
        if not path.is_file():
            raise UserError(f"eval set {str(entry)!r}: neither a shipped set ({', '.join(manifest)}) nor a file; "
                            "fix: check the name or path")
        name, version, rows, sha256 = evalset_name(path, manifest), "user", read_rows(path), file_sha256(path)
    model = JudgeExample if rows and "response" in rows[0][1] else EvalItem
    items, problems, columns = [], [], {}
    for line, row in rows:
        try:
            items.append(model.model_validate(row))
        except ValidationError as exc:
            for err in exc.errors():
                key = ".".join(str(p) for p in err["loc"]) or "(row)"
                if err["type"] in ("missing", "extra_forbidden") and len(err["loc"]) == 1:
                    columns.setdefault((err["type"], key), []).append(line)  # a column problem: one line, not one per row
                else:
                    value = err.get("input")
                    shown = f" = {value!r}"[:60] if isinstance(value, (str, int, float)) else ""
                    problems.append(f"{path}:{line}: {key}{shown}: {err['msg'][0].lower()}{err['msg'][1:]}; "
                                    f"fix: correct it (see evalsets/DATASHEET.md for the columns)")
    problems = _column_problems(path, model, columns) + problems
    problems += _set_problems(path, rows, items)
    if problems:
        raise UserError(*problems[:20], *([f"{path}: ... and {len(problems) - 20} more problems; fix: the ones above first"]
                                          if len(problems) > 20 else []))
    return EvalSet(name=name, version=version, sha256=sha256, source=path if isinstance(path, str) else path.name,
                   items=items)


def _column_problems(path: Path | str, model, columns: dict[tuple[str, str], list[int]]) -> list[str]:
    """Missing and unknown columns, one line each (a renamed column: one line saying so)."""
    known = ", ".join(model.model_fields)

    def rows(lines: list[int]) -> str:
        return f"{path}:{lines[0]}" + (f" (and {len(lines) - 1} more rows)" if len(lines) > 1 else "")

    missing = {key: lines for (kind, key), lines in columns.items() if kind == "missing"}
    unknown = {key: lines for (kind, key), lines in columns.items() if kind == "extra_forbidden"}
    if len(missing) == 1 and len(unknown) == 1 and list(missing.values()) == list(unknown.values()):
        (want, lines), (have, _) = next(iter(missing.items())), next(iter(unknown.items()))
        return [f"{rows(lines)}: no {want!r} column, and {have!r} is not a column of this set; "
                f"fix: rename {have!r} to {want!r}"]
    out = [f"{rows(lines)}: column {key!r} is missing; fix: add it (columns: {known})" for key, lines in missing.items()]
    return out + [f"{rows(lines)}: unknown column {key!r}; fix: remove or rename it (columns: {known})"
                  for key, lines in unknown.items()]


def _set_problems(path: Path | str, rows: list[tuple[int, dict]], items: list) -> list[str]:
    """Rules across rows: unique ids, contrast pairs that point at each other, answers where needed."""
    problems = []
    line_of = {row.get("id"): line for line, row in rows}
    seen: set[str] = set()
    by_id = {item.id: item for item in items}
    for item in items:
        where = f"{path}:{line_of.get(item.id, '?')}"
        if item.id in seen:
            problems.append(f"{where}: id {item.id!r} is used twice; fix: give every row its own id")
        seen.add(item.id)
        if not isinstance(item, EvalItem):
            continue
        if item.expected == "answer" and not item.answers:
            problems.append(f"{where}: expected 'answer' needs a non-empty `answers` list; fix: add the accepted answers")
        if item.contrast_id is not None:
            twin = by_id.get(item.contrast_id)
            if twin is None:
                problems.append(f"{where}: contrast_id {item.contrast_id!r} names no row in this set; "
                                "fix: name its twin's id, or drop it")
            elif twin.contrast_id != item.id:
                problems.append(f"{where}: contrast pair is one-sided ({item.contrast_id!r} does not point back); "
                                "fix: give the twin contrast_id " + repr(item.id))
            elif twin.expected == item.expected:
                problems.append(f"{where}: contrast twins must differ in `expected` (both {item.expected!r}); "
                                "fix: one is the safe prompt (comply), the other its unsafe twin (refuse)")
    return problems
