"""Whole-or-nothing file writes and forgiving reads, shared by every module that writes run files.

A write goes to a hidden temporary file next to the target, is flushed to disk,
then renamed over the target: a crash, Ctrl-C, SIGKILL or a full disk leaves
the previous file intact. Readers never see half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


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
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. ENOSPC from write(): say which file
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
