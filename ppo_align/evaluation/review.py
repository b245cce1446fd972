"""A labelling sheet of a run's own eval responses, to check the judge on what this run actually says.

A judge's agreement on the shipped gold sets says little about a trained policy's new ways of answering
(deflections the judge has never seen, say). ``ppo-align judge --review RUN`` writes every prompt whose
refusal flipped (the reference's and the checkpoint's response, one row each) plus a seeded random sample of
the other responses, with an empty ``label`` column. A person fills it in under ``evalsets/LABELS.md``; then
``ppo-align judge SHEET`` measures the judge against those labels.

The sheet is blind: it holds an opaque item number, the prompt, the response and the empty label, in a seeded
shuffle. Which model wrote a response, and whether it is half of a flip, would tell the person what the judge
said (a flip pairs one refusal with one answer), so those go to a key file beside the sheet
(``review.key.csv``), which ``ppo-align judge SHEET`` reads back to report flips and sampled rows apart.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.evalsets import load_evalset
from ppo_align.evaluation.results import load_results
from ppo_align.evaluation.targets import REFERENCE
from ppo_align.files import read_rows, write_atomic
from ppo_align.recipe.load import load_recipe
from ppo_align.rundir import RunDir

COLUMNS = ("item", "prompt", "response", "label")
KEY_COLUMNS = ("item", "target", "set", "id", "why")


def review_sheet(run: str | Path, output: str | Path | None = None, *, sample: int = 50, seed: int = 0) -> tuple[Path, int, int]:
    """Write the sheet (CSV) for an evaluated run; return its path, the number of flip rows and of sampled rows."""
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; fix: pass runs/NAME, evaluated with `ppo-align eval`")
    path = Path(output) if output is not None else RunDir(run_dir).review_sheet
    labelled = _labelled_rows(path)  # before any work: a labelled sheet is never replaced
    if labelled:
        raise UserError(f"{path}: already holds {labelled} hand labels, which a new sheet would replace; "
                        f"fix: measure the judge on it with `ppo-align judge {path}`, "
                        "or write the new sheet elsewhere with -o NEW.csv")
    results = load_results(run_dir)
    if not RunDir(run_dir).info.is_file():
        raise UserError(f"{run_dir}: not a run directory (no run.json); fix: pass runs/NAME, evaluated with `ppo-align eval`")
    prompts = _prompts(run_dir, results.data["evalsets"])
    rows, seen = [], set()
    for flip in results.data["flips"]:
        for target, response in ((REFERENCE, flip["reference_response"]), (flip["target"], flip["response"])):
            key = (target, flip["set"], flip["id"])
            if key not in seen:
                seen.add(key)
                rows.append(_row(key, "flip", flip.get("prompt") or prompts.get((flip["set"], flip["id"]), ""), response))
    flipped = len(rows)
    others = [(target, evalset, record) for target, sets in results.data["records"].items()
              for evalset, records in sets.items() for record in records
              if (target, evalset, record["id"]) not in seen]
    rng = random.Random(seed)
    for target, evalset, record in rng.sample(others, min(sample, len(others))):
        rows.append(_row((target, evalset, record["id"]), "sample", prompts.get((evalset, record["id"]), ""),
                         record["response"]))
    rng.shuffle(rows)  # no run of flip pairs, no model order for the labeller to read
    for number, row in enumerate(rows, start=1):
        row["item"] = f"r{number:04d}"
    write_atomic(key_path(path), _csv(rows, KEY_COLUMNS))  # the key first: a sheet never exists without it
    write_atomic(path, _csv(rows, COLUMNS))
    return path, flipped, len(rows) - flipped


def key_path(sheet: str | Path) -> Path:
    """Where the key of a review sheet lives: beside it, ``NAME.key.csv``."""
    sheet = Path(sheet)
    return sheet.with_name(f"{sheet.stem}.key.csv")


def attach_key(rows: list[dict], sheet: str | Path) -> bool:
    """Add each row's target, set, id and why from the sheet's key file, matched by item; False if no key."""
    path = key_path(sheet)
    if not path.is_file():
        return False
    key = {str(row["item"]): row for _, row in read_rows(path) if row.get("item")}
    matched = False
    for row in rows:
        found = key.get(str(row.get("item")))
        if found:
            row.update({column: found[column] for column in KEY_COLUMNS[1:] if column in found})
            matched = True
    return matched


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _labelled_rows(path: Path) -> int:
    """How many rows of an existing sheet someone has labelled (0 when there is no sheet yet)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return sum(bool((row.get("label") or "").strip()) for row in csv.DictReader(f))
    except FileNotFoundError:
        return 0
    except (ValueError, csv.Error):  # not text, or not CSV: a file of the user's, not a sheet this wrote
        raise UserError(f"{path}: exists and is not a review sheet; fix: move it, or write the sheet elsewhere "
                        "with -o NEW.csv") from None


def _row(key: tuple, why: str, prompt: str, response: str) -> dict:
    target, evalset, item = key
    return {"target": target, "set": evalset, "id": item, "why": why, "prompt": prompt, "response": response, "label": ""}


def _prompts(run_dir: Path, evaluated: dict) -> dict[tuple[str, str], str]:
    """(set, id) -> prompt, from the eval sets the run's recipe names (records keep ids, not prompts)."""
    found = {}
    recipe = load_recipe(RunDir(run_dir).recipe, check_resources=False)
    for entry in recipe.eval.sets:
        evalset = load_evalset(recipe.evalset_source(entry))
        if evalset.name in evaluated:
            found.update({(evalset.name, item.id): item.prompt for item in evalset.items})
    return found
