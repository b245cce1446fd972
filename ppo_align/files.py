"""Whole-or-nothing file writes and forgiving reads, shared by every module that writes run files.

A write goes to a hidden temporary file next to the target, is flushed to disk,
then renamed over the target: a crash, Ctrl-C, SIGKILL or a full disk leaves
the previous file intact. Readers never see half a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable

from ppo_align.errors import UserError


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` atomically (text is written as UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # ENOSPC from write() names no file, a refused open() names the temporary one: say the user's file.
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_json_atomic(path: Path, data, **dump_options) -> None:
    """Strict JSON (no NaN, which browsers and many readers reject), written atomically."""
    write_atomic(path, json.dumps(data, ensure_ascii=False, allow_nan=False, **{"indent": 1, **dump_options}))


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when it is missing or unreadable (callers recompute or skip)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return {}


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines log; a line cut short by a crash mid-write (or not UTF-8) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def digest(*parts: str | bytes, files: Iterable[Path] = ()):
    """The one content hash of ppo-align (cache keys, fingerprints, versions): sha256 over ``parts``, then
    the bytes of each file, read in blocks so a multi-GB weight file never sits in memory at once."""
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                hashed.update(block)
    return hashed


def file_sha256(path: Path) -> str:
    return digest(files=[path]).hexdigest()


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """The rows of a JSONL, JSON, CSV or TSV file as (line number, row) pairs; CSV by the ``.csv`` suffix, tab-separated
    by ``.tsv``, a JSON array of objects by ``.json`` (numbered by position in the array), JSONL otherwise.

    CSV and TSV cells that are empty are left out of their row, and an ``answers`` cell is split on ``|``.

    Raises:
        UserError: the file cannot be read, a JSONL line is not a JSON object, or there are no rows
            (one line naming ``file:line`` and the fix).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSV) is not part of the first column
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); fix: save it as UTF-8 JSONL or CSV") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); fix: check the path") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = []
        # Quoted cells may hold newlines.
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        start = 2
        for row in reader:
            if row.get("answers"):
                row["answers"] = [a.strip() for a in row["answers"].split("|") if a.strip()]
            rows.append((start, {k: v for k, v in row.items() if k is not None and v not in ("", None)}))
            start = reader.line_num + 1
        if not rows:
            raise UserError(f"{path}: no rows; fix: a header line, then one row per line")
        return rows
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix: one JSON array of objects, "
                            "or JSONL (one object per line) in a .jsonl file") from None
        if not isinstance(data, list) or not data or not all(isinstance(row, dict) for row in data):
            raise UserError(f"{path}: expected a non-empty JSON array of objects; fix: [{{...}}, {{...}}], or JSONL "
                            "(one object per line) in a .jsonl file")
        return list(enumerate(data, start=1))
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{i}: invalid JSON ({exc.msg}); fix: one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: expected a JSON object per line; fix: one {{...}} object per line")
        rows.append((i, row))
    if not rows:
        raise UserError(f"{path}: no rows; fix: one JSON object per line")
    return rows
