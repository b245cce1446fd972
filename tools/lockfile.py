"""The lock of the tested stack (constraints.txt): write it, compare an environment with it.

    python tools/lockfile.py write constraints.txt   # the lock from this environment (make lock)
    python tools/lockfile.py diff constraints.txt    # what this environment moved (make deps-check)

The lock is a pip constraints file: every distribution installed in the environment the tests ran in,
at its exact version, except ppo-align itself. `make setup` installs through it; `tests/test_lock.py`
fails when the environment differs from it.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

HEADER = """\
# The tested stack: `make setup` (and so `make demo`, `make test`, CI) installs exactly these versions.
# Upgrading is a deliberate commit: `make deps-check`, then `make lock`, then `make test`, then commit.
# Written by tools/lockfile.py from the environment the tests passed in; do not edit by hand.
"""
# The project itself is installed editable from the tree, never from the lock.
SELF = "ppo-align"
# pip and its build tools belong to the environment, not to the stack under test.
ENVIRONMENT_TOOLS = ("pip", "setuptools", "wheel")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """2.13.0+cpu -> 2.13.0: a local build label names a wheel, not a version another machine can ask for."""
    return version.split("+", 1)[0]


def installed() -> dict[str, str]:
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) != SELF:
            found[canonical(name)] = public(dist.version)
    return found


def read(lock: Path) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{lock}:{number}: {line!r} is not an exact pin (name==version)")
        pins[canonical(name)] = version.strip()
    return pins


def write(lock: Path) -> None:
    pins = {name: v for name, v in installed().items() if name not in ENVIRONMENT_TOOLS}
    lock.write_text(HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
    print(f"{lock}: {len(pins)} pins")


def differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """One line per locked package whose installed version differs, and per package the lock lacks."""
    lines = [f"{name}: {lock[name]} -> {env.get(name, 'not installed')}"
             for name in sorted(lock) if env.get(name) != lock[name]]
    lines += [f"{name}: not locked -> {env[name]}" for name in sorted(set(env) - set(lock))
              if name not in ENVIRONMENT_TOOLS]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "diff"):
        print(__doc__, file=sys.stderr)
        return 2
    lock = Path(argv[1])
    if argv[0] == "write":
        write(lock)
        return 0
    moved = differences(read(lock), installed())
    print(f"{len(moved)} package(s) differ from {lock}" + (":" if moved else ""))
    for line in moved:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
