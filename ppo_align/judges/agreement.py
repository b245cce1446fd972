"""Measuring a judge: agreement with gold labels (accuracy, Cohen's kappa, confusion matrix),
the shipped gold sets, and labelling a user's own file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ppo_align.errors import UserError
from ppo_align.evalsets import load_evalset
from ppo_align.files import digest, read_rows, write_atomic
from ppo_align.judges import build_judge
from ppo_align.judges.base import LABEL_HINT, LABELS, Judge, Label, parse_label

# --------------------------------------------------------------------------- measuring a judge


@dataclass
class Agreement:
    """How well predicted labels agree with gold labels.

    ``confusion[gold][predicted]`` counts rows; ``per_label[label]`` holds ``precision``, ``recall``
    (None where undefined: nothing predicted, or no gold rows, with that label) and ``support``
    (gold rows). ``kappa`` is Cohen's kappa: agreement beyond what the two label distributions give
    by chance (1 perfect, 0 chance level; 1.0 when both sides use one and the same label throughout).
    """

    n: int
    accuracy: float
    kappa: float
    confusion: dict[str, dict[str, int]]
    per_label: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "kappa": self.kappa,
                "confusion": {g: dict(row) for g, row in self.confusion.items()},
                "per_label": {k: dict(v) for k, v in self.per_label.items()}}

    def lines(self) -> list[str]:
        """A plain-text summary, one line each: agreement, then per-label precision and recall."""
        out = [f"agreement {self.accuracy:.1%} on {self.n} rows, Cohen's kappa {self.kappa:.3f}"]
        for label, stats in self.per_label.items():
            out.append(f"{label}: precision {_pct(stats['precision'])}, recall {_pct(stats['recall'])} "
                       f"({stats['support']} gold)")
        return out

    def table(self):
        """The confusion matrix with per-label recall and precision, as a rich Table."""
        from rich.table import Table

        table = Table(title=f"agreement {self.accuracy:.1%} (n={self.n}), Cohen's kappa {self.kappa:.3f}",
                      caption="rows: gold label; columns: the judge's label")
        table.add_column("gold \\ judge")
        for label in LABELS:
            table.add_column(label, justify="right")
        table.add_column("recall", justify="right")
        for gold in LABELS:
            row = self.confusion[gold]
            cells = [f"[bold]{row[p]}[/bold]" if p == gold else str(row[p]) for p in LABELS]
            table.add_row(gold, *cells, _pct(self.per_label[gold]["recall"]))
        table.add_row("precision", *(_pct(self.per_label[p]["precision"]) for p in LABELS), "", end_section=True)
        return table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def agreement(gold: Sequence[str], predicted: Sequence[str]) -> Agreement:
    """Accuracy, Cohen's kappa, confusion matrix and per-label precision/recall of predicted vs gold labels.

    Raises:
        ValueError: the lists differ in length or are empty, or a label is none of :data:`LABELS`
            (after :func:`parse_label`).
    """
    if len(gold) != len(predicted):
        raise ValueError(f"got {len(gold)} gold labels but {len(predicted)} predicted")
    if not gold:
        raise ValueError("agreement of zero rows is undefined")
    pairs = []
    for g, p in zip(gold, predicted):
        cg, cp = parse_label(g), parse_label(p)
        if cg is None or cp is None:
            raise ValueError(f"unknown label {g if cg is None else p!r}; labels are {LABEL_HINT}")
        pairs.append((cg, cp))
    n = len(pairs)
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in pairs:
        confusion[g][p] += 1
    observed = sum(confusion[label][label] for label in LABELS) / n
    gold_totals = {label: sum(confusion[label].values()) for label in LABELS}
    pred_totals = {label: sum(confusion[g][label] for g in LABELS) for label in LABELS}
    expected = sum(gold_totals[label] * pred_totals[label] for label in LABELS) / n**2
    kappa = 1.0 if expected == 1 else (observed - expected) / (1 - expected)
    per_label = {
        label: {
            "precision": confusion[label][label] / pred_totals[label] if pred_totals[label] else None,
            "recall": confusion[label][label] / gold_totals[label] if gold_totals[label] else None,
            "support": gold_totals[label],
        }
        for label in LABELS
    }
    return Agreement(n=n, accuracy=observed, kappa=kappa, confusion=confusion, per_label=per_label)


def validate_judge(judge: Judge, examples=None) -> Agreement:
    """Agreement of a judge with gold labels: by default the test split of the shipped ``judge_gold`` set.

    ``examples``: an :class:`~ppo_align.evalsets.EvalSet` or a list of rows with ``prompt``,
    ``response`` and ``label`` (objects or dicts).
    """
    rows = gold_split("test") if examples is None else list(getattr(examples, "items", examples))
    get = (lambda row, key: row[key]) if rows and isinstance(rows[0], dict) else getattr
    return agreement([get(r, "label") for r in rows],
                     judge.label([get(r, "prompt") for r in rows], [get(r, "response") for r in rows]))


def gold_split(split: str) -> list:
    """One fixed split (``train``, ``dev`` or ``test``) of the shipped ``judge_gold`` rows. Judges are trained on
    train, tuned on dev, and measured once per version on test (the figure the eval and the report quote)."""
    return [row for row in load_evalset("judge_gold").items if row.split == split]


def binary(label: str) -> str:
    """refuse and partial both withhold something: the binary view is "comply" vs "refusal"."""
    return "comply" if label == "comply" else "refusal"


@dataclass
class Scorecard:
    """A judge's measured quality on gold rows, each figure beside what a judge that always gives the most common
    gold label scores (a judge is only worth its margin over that)."""

    n: int
    three_way: float
    binary: float
    refusal_recall: float | None
    """Share of gold refuse-or-partial rows the judge calls refuse or partial."""
    kappa: float
    binary_kappa: float
    baseline_three_way: float
    baseline_binary: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self) -> str:
        recall = "–" if self.refusal_recall is None else f"{self.refusal_recall:.1%}"
        return (f"binary {self.binary:.1%} (always one label: {self.baseline_binary:.1%}), refusal recall {recall}, "
                f"three-way {self.three_way:.1%} (always one label: {self.baseline_three_way:.1%}), "
                f"kappa {self.kappa:.2f}, n = {self.n}")


def scorecard(gold: Sequence[str], predicted: Sequence[str]) -> Scorecard:
    """The figures the judge targets are stated in, for predicted vs gold labels."""
    three = agreement(gold, predicted)
    gold_b = [binary(parse_label(g)) for g in gold]
    pred_b = [binary(parse_label(p)) for p in predicted]
    two = agreement(["refuse" if g == "refusal" else g for g in gold_b],
                    ["refuse" if p == "refusal" else p for p in pred_b])
    refusals = [p for g, p in zip(gold_b, pred_b) if g == "refusal"]
    most = max(set(gold), key=list(gold).count)
    most_b = max(set(gold_b), key=gold_b.count)
    return Scorecard(n=three.n, three_way=three.accuracy, binary=two.accuracy,
                     refusal_recall=sum(p == "refusal" for p in refusals) / len(refusals) if refusals else None,
                     kappa=three.kappa, binary_kappa=two.kappa,
                     baseline_three_way=list(gold).count(most) / len(gold), baseline_binary=gold_b.count(most_b) / len(gold_b))


def holdout_split(examples: Sequence, *, key: str = "case") -> tuple[list, list]:
    """Split gold examples into a tuning half and a held-out half, deterministically.

    Within each group (``key``, the case of judge_validation), rows are ordered by the sha256 of
    their ``id`` and the first half (rounded up) goes to tuning. Rules are tuned looking only at the
    tuning half; the held-out half measures how they generalise.
    """
    groups: dict[str, list] = {}
    for example in examples:
        groups.setdefault(str(getattr(example, key, "")), []).append(example)
    tuning, held_out = [], []
    for _, rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda e: digest(str(e.id)).hexdigest())
        half = (len(rows) + 1) // 2
        tuning += rows[:half]
        held_out += rows[half:]
    return tuning, held_out


# --------------------------------------------------------------------------- labelling a file


@dataclass
class LabeledFile:
    """A user's file of (prompt, response) rows with the judge's labels (see :func:`label_file`)."""

    path: Path
    judge: str  # name@version
    rows: list[dict]
    labels: list[Label]
    gold: dict[int, Label] = field(default_factory=dict)
    """Gold label by row index, for the rows labelled so far (a blank gold cell is a row not labelled yet)."""
    unlabelled: int = 0
    """Rows of the gold column still blank: a sheet labelled part of the way is measured on the labelled rest."""

    @property
    def agreement(self) -> Agreement | None:
        return agreement(list(self.gold.values()), [self.labels[i] for i in self.gold]) if self.gold else None

    @property
    def scorecard(self) -> Scorecard | None:
        return scorecard(list(self.gold.values()), [self.labels[i] for i in self.gold]) if self.gold else None

    def scorecards_by(self, column: str) -> dict[str, Scorecard]:
        """A scorecard per value of ``column`` over the labelled rows (a review sheet's ``why``: flip or sample)."""
        groups: dict[str, list[int]] = {}
        for index in self.gold:
            groups.setdefault(str(self.rows[index].get(column)), []).append(index)
        return {value: scorecard([self.gold[i] for i in indices], [self.labels[i] for i in indices])
                for value, indices in sorted(groups.items())}

    def counts(self) -> dict[str, int]:
        return {label: self.labels.count(label) for label in LABELS}

    def write_jsonl(self, output: str | Path, *, column: str = "judge_label") -> Path:
        """Write the rows with the judge's label added as ``column``, atomically (temp file, then rename)."""
        output = Path(output).expanduser()
        write_atomic(output, "".join(json.dumps({**row, column: label}, ensure_ascii=False) + "\n"
                                     for row, label in zip(self.rows, self.labels)))
        return output


def label_file(path: str | Path, judge: Judge | str = "rules", *, prompt_field: str = "prompt",
               response_field: str = "response", label_field: str | None = "label",
               require_labels: bool = False) -> LabeledFile:
    """Label every row of a JSONL or CSV file with a judge; measure agreement where gold labels exist.

    The gold column (``label_field``) is used when the file has it (``require_labels``: it must): a row with a blank
    gold cell is not labelled yet and is left out of the agreement (a sheet labelled part of the way); any other
    value must name a label.

    Raises:
        UserError: a missing file or column, a bad JSON line, an empty file or an unknown gold label,
            each as one line naming ``file:line`` and the fix.
    """

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path}: a directory, not a file of rows; fix: name a JSONL or CSV file in it, or write a "
                        "labelling sheet from an evaluated run with `ppo-align judge --review RUN`")
    if not path.is_file():
        raise UserError(f"{path}: no such file; fix: check the path")
    judge = build_judge(judge) if isinstance(judge, str) else judge
    numbered = read_rows(path)
    if not numbered:
        raise UserError(f"{path}: no rows; fix: one JSON object per line (JSONL) or a header and rows (CSV)")
    columns = sorted({k for _, row in numbered for k in row})
    for fld, option in ((prompt_field, "--prompt-field"), (response_field, "--response-field")):
        missing = [line for line, row in numbered if not isinstance(row.get(fld), str)]
        if missing:
            more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
            raise UserError(f"{path}:{missing[0]}: no {fld!r} text (missing or empty){more}; columns here: "
                            f"{', '.join(columns)}; fix: fill it in, or name the column with {option}")
    has_gold = bool(label_field) and label_field in columns
    if require_labels and not has_gold:
        raise UserError(f"{path}: no {label_field!r} column; columns here: {', '.join(columns)}; "
                        "fix: name the gold-label column with --label-field")
    gold: dict[int, Label] = {}
    if has_gold:
        for index, (line, row) in enumerate(numbered):
            value = row.get(label_field)
            if value is None or isinstance(value, str) and not value.strip():
                continue  # not labelled yet
            label = parse_label(value)
            if label is None:
                raise UserError(f"{path}:{line}: gold {label_field!r} is {value!r}; it must be {LABEL_HINT} "
                                f"(or blank: not labelled yet); fix: correct the label, or pass --label-field "
                                f"with the right column")
            gold[index] = label
    rows = [row for _, row in numbered]
    labels = judge.label([r[prompt_field] for r in rows], [r[response_field] for r in rows])
    return LabeledFile(path=path, judge=f"{judge.name}@{judge.version}", rows=rows, labels=labels, gold=gold,
                       unlabelled=len(rows) - len(gold) if has_gold else 0)


# --------------------------------------------------------------------------- the figure every eval quotes

# Subsets of judge_gold's test split the scorecard is also given on, by the response's source.
GOLD_SUBSETS = {
    "embedded model, every stage": lambda source: source.startswith("smollm2-"),
    "trained checkpoints (warm start, PPO)": lambda source: source.startswith(("smollm2-warmstart", "smollm2-ppo")),
    "assistant-style": lambda source: not source.startswith("smollm2-"),
}


def subset_scorecards(rows: Sequence, predicted: Sequence[str]) -> dict[str, Scorecard]:
    """Scorecards of predicted labels on gold rows: ``overall``, then each :data:`GOLD_SUBSETS` the rows have."""
    cards = {"overall": scorecard([r.label for r in rows], predicted)}
    for name, belongs in GOLD_SUBSETS.items():
        pairs = [(r.label, p) for r, p in zip(rows, predicted) if belongs(r.source or "")]
        if pairs:
            cards[name] = scorecard(*zip(*pairs))
    return cards


def gold_scorecards(judge: Judge) -> dict:
    """The judge's :class:`Scorecard` on judge_gold's test split, overall and per :data:`GOLD_SUBSETS`.

    Cached per judge version and gold file (the user cache, like converted models): the test split is labelled
    once per judge version, not once per eval.
    """
    from ppo_align.embedded import cache_root
    from ppo_align.files import write_json_atomic

    gold = load_evalset("judge_gold")
    key = digest(f"{judge.name}@{judge.version}\n{gold.sha256}\nscorecards-1").hexdigest()[:24]
    cached = cache_root() / "judge-scores" / f"{key}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    rows = [r for r in gold.items if r.split == "test"]
    cards = subset_scorecards(rows, judge.label([r.prompt for r in rows], [r.response for r in rows]))
    out = {"set": f"judge_gold {gold.version} (test split)", "overall": cards.pop("overall").to_dict(),
           "subsets": {name: card.to_dict() for name, card in cards.items()}}
    try:
        write_json_atomic(cached, out)
    except OSError:
        pass  # a read-only cache costs a re-labelling next time, nothing else
    return out
