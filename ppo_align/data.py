"""Where a recipe's rows come from: a JSONL, JSON or CSV file, or a Hugging Face dataset.

Both give the same thing to the stage that reads them: numbered rows (dicts) and a label that error messages
put in front of a row number (``prompts.jsonl:7``, ``dataset org/name (train):7``), so a bad row is named the
same way whatever held it. A dataset's columns are renamed by the recipe's mapping first, and conversational
rows (message lists) become the text columns this tool reads.

Local files are read by :func:`ppo_align.files.read_rows`, not ``datasets.load_dataset``, which would ping a
download counter for every local file unless the hub is switched off, and whose errors name no line. A local
dataset (``save_to_disk`` directory, parquet file) is read without any network; a hub id goes through
``datasets.load_dataset`` with the recipe's config, split and revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.files import digest, read_rows
from ppo_align.recipe.schema import DatasetSource, Recipe


@dataclass
class Rows:
    label: str
    """What messages put before a row number: a file's name, or ``dataset NAME (SPLIT)``."""
    rows: list[tuple[int, dict]]

    def fingerprint(self) -> str:
        """A hash of the rows' content: stage caches follow the data, not where it came from."""
        return digest(json.dumps([row for _, row in self.rows], sort_keys=True, default=str)).hexdigest()

    def at(self, number: int) -> str:
        return f"{self.label}:{number}"


def read_data(recipe: Recipe, value: str | DatasetSource, key: str) -> Rows:
    """The rows a recipe key names (``key`` is the key, for messages), file or dataset.

    Raises:
        UserError: one line naming the key, the source and the fix.
    """
    if isinstance(value, str):
        path = recipe.resolve_path(value)
        if not path.is_file():
            raise UserError(f"{key} = {value!r}: no such file ({path}); fix: check the path (relative to the recipe file)")
        if path.suffix.lower() not in {".jsonl", ".json", ".csv"}:
            raise UserError(f"{key} = {value!r}: expected a .jsonl, .json or .csv file; fix: convert it to JSONL "
                            "(one JSON object per line) or CSV, or name it as a dataset ({dataset: ...})")
        return Rows(path.name, read_rows(path))
    return read_dataset(value, key, recipe.resolve_path(value.dataset))


def read_dataset(value: DatasetSource, key: str, local: Path | None = None) -> Rows:
    """The rows of a dataset, columns mapped and conversations flattened (``local``: where its path, if it is
    one, points; default: as written)."""
    table = _load_dataset(value, key, Path(value.dataset).expanduser() if local is None else local)
    label = f"dataset {value.dataset} ({value.split})"
    missing = [theirs for theirs in value.columns.values() if theirs not in table.column_names]
    if missing:
        raise UserError(f"{key}: {label} has no column {missing[0]!r} (columns: {', '.join(table.column_names)}); "
                        f"fix: correct {key}.columns")
    rows = []
    for number, row in enumerate(table, start=1):
        for ours, theirs in value.columns.items():
            row[ours] = row.pop(theirs)
        rows.append((number, text_columns(row)))
    if not rows:
        raise UserError(f"{key}: {label} has no rows; fix: check the split and config")
    return Rows(label, rows)


def _load_dataset(source: DatasetSource, key: str, local: Path):
    import datasets

    try:
        if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise UserError(f"{key}: {source.dataset} has no split {source.split!r} (splits: "
                                    f"{', '.join(loaded)}); fix: set {key}.split")
                loaded = loaded[source.split]
            return loaded
        if local.is_file():
            if local.suffix.lower() != ".parquet":
                raise UserError(f"{key}: {source.dataset} is a file but not parquet; fix: give a JSONL/CSV file as a "
                                f"plain path ({key}: {source.dataset}), or a parquet file or dataset directory here")
            import pyarrow.parquet as pq

            return datasets.Dataset(pq.read_table(local))
        if local.is_dir() or source.dataset.startswith((".", "/", "~")):
            raise UserError(f"{key}: {source.dataset} is not a dataset directory (no state.json or dataset_dict.json "
                            f"from save_to_disk); fix: check the path (relative to the recipe file)")
        return datasets.load_dataset(source.dataset, source.config, split=source.split, revision=source.revision)
    except UserError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise UserError(f"{key}: cannot load dataset {source.dataset!r} ({str(exc).splitlines()[0][:200]}); fix: check "
                        "the id, config, split and revision, and that this machine can reach the hub") from None


def text_columns(row: dict) -> dict:
    """A conversational row as the text columns the stages read: ``messages`` gives ``prompt`` (the last user
    message) and, when it ends with the assistant, ``response``; ``prompt``, ``chosen`` and ``rejected`` given as
    message lists become the last user / assistant message's text. Other rows are returned as they are."""
    row = dict(row)
    messages = row.get("messages")
    if _is_conversation(messages):
        if messages[-1].get("role") == "assistant":
            row.setdefault("response", messages[-1].get("content"))
            messages = messages[:-1]
        row.setdefault("prompt", _last(messages, "user"))
    if _is_conversation(row.get("prompt")):
        row["prompt"] = _last(row["prompt"], "user")
    for key in ("chosen", "rejected"):
        if _is_conversation(row.get(key)):
            conversation = row[key]
            if "prompt" not in row:
                row["prompt"] = _last(conversation, "user")
            row[key] = _last(conversation, "assistant")
    return row


def _is_conversation(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _last(messages: list[dict], role: str) -> str | None:
    return next((m.get("content") for m in reversed(messages) if m.get("role") == role), None)
