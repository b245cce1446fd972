"""The environment under test is the locked stack (constraints.txt), so what CI passes is what `make` installs."""

from __future__ import annotations

import importlib.util

from conftest import REPO, readme_count

_spec = importlib.util.spec_from_file_location("lockfile", REPO / "tools" / "lockfile.py")
lockfile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockfile)


def test_installed_versions_match_the_lock():
    """A setup that ignored the lock (or a lock edited without re-testing) fails here, naming each package."""
    locked, env = lockfile.read(REPO / "constraints.txt"), lockfile.installed()
    assert {"torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"} <= set(locked)
    moved = {name: (version, env.get(name)) for name, version in locked.items() if env.get(name) != version}
    assert moved == {}, "installed versions differ from constraints.txt (locked, installed): " + repr(moved)


def test_the_lock_pins_every_dependency_the_project_declares():
    from importlib import metadata

    from packaging.requirements import Requirement

    declared = {lockfile.canonical(Requirement(r).name) for r in metadata.requires("ppo-align") or []}
    assert declared and declared <= set(lockfile.read(REPO / "constraints.txt"))


def test_the_readme_states_how_many_packages_the_lock_pins():
    assert readme_count(r"\((\d+) of them: torch") == len(lockfile.read(REPO / "constraints.txt"))
