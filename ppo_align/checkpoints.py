"""Checkpoint layout, atomic writes, completeness marker and discovery.

A checkpoint is written into a hidden temporary directory, the completeness
marker last, and only then renamed to ``checkpoint-<step>``. A crash or
Ctrl-C during a save therefore leaves either the previous checkpoints
untouched or a ``.tmp-*`` directory that discovery ignores and the next save
removes. Eval and resume only ever see complete checkpoints.

Layout::

    checkpoint-<step>/
      policy/          PEFT adapter of the policy (adapter_config.json + safetensors)
      value/           PEFT adapter of the value model, with its score head (PPO only: RLOO and GRPO have none)
      state/           optimizer, LR scheduler and RNG states (PPO: accelerate save_state + scheduler.json;
                       RLOO/GRPO: the transformers Trainer's optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json)
      progress.json    step, episode, and what produced the checkpoint
      COMPLETE         written last
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ppo_align.rundir import CHECKPOINT_NAME, RunDir

COMPLETE = "COMPLETE"
PROGRESS = "progress.json"
POLICY_DIR = "policy"
VALUE_DIR = "value"
STATE_DIR = "state"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def complete(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def progress(self) -> dict:
        return json.loads((self.path / PROGRESS).read_text())


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return RunDir(run_dir).checkpoint(step)


def find_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Every ``checkpoint-<step>`` directory of a run, complete or not, by step."""
    found = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            match = CHECKPOINT_NAME.match(child.name)
            if match and child.is_dir():
                found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_complete(run_dir: Path) -> Checkpoint | None:
    complete = [c for c in find_checkpoints(run_dir) if c.complete]
    return complete[-1] if complete else None


def best(run_dir: Path) -> Checkpoint | None:
    """The last complete checkpoint whose behaviour check (``progress.json`` "monitor") satisfied the rules."""
    for ckpt in reversed([c for c in find_checkpoints(run_dir) if c.complete]):
        if (ckpt.progress().get("monitor") or {}).get("ok"):
            return ckpt
    return None


def write_checkpoint(run_dir: Path, step: int, progress: dict, write: Callable[[Path], None], *,
                     main: bool = True, barrier: Callable[[], None] = lambda: None) -> Checkpoint:
    """Write a checkpoint atomically.

    Args:
        run_dir: the run directory.
        step: the PPO update the checkpoint follows.
        progress: counters saved as progress.json (step is added).
        write: fills a directory with the policy, value and state parts.
        main, barrier: with several processes, every one calls this with its ``write``; the main process
            prepares and publishes the directory, and ``barrier`` waits for all of them in between.
    """
    tmp = run_dir / f".tmp-checkpoint-{step}"  # one name every process can find
    final = checkpoint_path(run_dir, step)
    if main:
        for stale in run_dir.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        write(tmp)
        barrier()
        if main:
            (tmp / PROGRESS).write_text(json.dumps({"step": step, **progress}, indent=2))
            _fsync_tree(tmp)
            (tmp / COMPLETE).write_text("")
            if final.exists():  # an older save of the same step (e.g. a resumed run re-saving): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    return Checkpoint(final, step)


def prune(run_dir: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (None keeps all), and never the run's best:
    an older checkpoint that passed the behaviour check may be the one worth keeping."""
    if keep is None:
        return
    complete = [c for c in find_checkpoints(run_dir) if c.complete]
    kept_best = best(run_dir)
    for old in complete[:-keep]:
        if kept_best is None or old.path != kept_best.path:
            shutil.rmtree(old.path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    # Flush file contents before the rename makes the checkpoint visible, so a
    # power loss cannot leave a "complete" checkpoint with empty files.
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
