"""What produced a file: package versions and the git revision of ppo-align, recorded in run.json and results.json."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("ppo-align", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets")


def versions() -> dict[str, str | None]:
    """Installed version of each package that decides the numbers (None when absent)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision() -> str | None:
    """The commit ppo-align's own source is at, when it runs from a clone (None from a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
