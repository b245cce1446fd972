"""The counts the README states about the repository match the repository (they drifted before this test)."""

from __future__ import annotations

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def _stated(pattern: str) -> int:
    found = re.findall(pattern, README)
    assert len(found) == 1, f"README: expected one match of {pattern!r}, found {found}"
    return int(found[0])


def test_the_readme_counts_match_the_repository():
    assert _stated(r"(\d+) cases in `tests/bad_inputs/`") == len(list((REPO / "tests/bad_inputs").glob("*/*.yaml")))
    assert _stated(r"(\d+) broken recipes in `tests/broken_recipes/`") == len(
        list((REPO / "tests/broken_recipes").glob("*.yaml")))
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line and line[:1].isalnum()]
    assert _stated(r"\((\d+) of them: torch") == len(pins)
