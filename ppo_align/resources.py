"""Files shipped with the package: recipes and eval sets.

In a wheel they live under ``ppo_align/_shipped/``; in an editable install
(a clone) they are read from the repository's top-level folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` files ("recipes" or "evalsets")."""
    for candidate in (_PACKAGE / "_shipped" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    return _PACKAGE.parent / kind
