"""Experiment trackers (``output.report_to``): what TRL's own callbacks do not send.

TRL's trainer already sends its PPO scalars (reward, KL, losses) to the trackers the recipe names. What
this tool measures beyond them goes through here, to the same trackers: the behaviour monitor's refusal
rates at each checkpoint (``monitor/...``), sampled rollouts as a table (``samples``), and, from `ppo-align
eval`, each evaluated target's headline rates and changes from the reference (``eval/...``) at its PPO
update, so a tracker shows behaviour next to reward and KL on one axis.

TensorBoard writes into ``runs/NAME/tensorboard/`` (TRL's scalars too); tables become markdown text there.
Weights & Biases and Trackio get one run per run directory, resumed by id, so training and a later eval land
in the same run. Only the TensorBoard path is exercised by the test suite: the others are written to those
libraries' documented ``init`` / ``log`` / ``Table`` calls and need the library and, for W&B, a network.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "trackio")
TENSORBOARD_DIR = "tensorboard"  # inside the run directory
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def missing_packages(names: list[str]) -> list[str]:
    """The trackers among ``names`` whose library is not installed."""
    return [n for n in names if importlib.util.find_spec(_PACKAGE[n]) is None]


class Trackers:
    """Sends scalars and tables to every tracker named; with none named, does nothing."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str):
        self.backends = [_BACKENDS[name](Path(run_dir), run_name) for name in names]

    def __bool__(self) -> bool:
        return bool(self.backends)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        for backend in self.backends:
            backend.scalars(values, step)

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        for backend in self.backends:
            backend.table(key, columns, [[_cell(c) for c in row] for row in rows], step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def _cell(value) -> str | float | int:
    return value if isinstance(value, (int, float)) else str(value)


def tensorboard_dir(run_dir: Path) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR


class _TensorBoard:
    def __init__(self, run_dir: Path, run_name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(tensorboard_dir(run_dir)))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        from ppo_align.reporting.render import markdown_table  # TensorBoard renders a text summary as markdown

        self.writer.add_text(key, "\n".join(markdown_table(columns, rows)), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """One W&B run per run directory (its id is the directory's name), resumed by `eval` after `train`."""

    def __init__(self, run_dir: Path, run_name: str):
        import wandb

        self.wandb = wandb
        self.run = wandb.run or wandb.init(project=os.environ.get("WANDB_PROJECT", "ppo-align"), name=run_name,
                                           id=_run_id(run_dir), resume="allow", dir=str(run_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        # No `step=`: TRL's callback owns W&B's step counter, and W&B drops steps that go backwards.
        self.run.log({**values, "ppo/update": step})

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows), "ppo/update": step})

    def close(self) -> None:
        pass  # the run is TRL's (training) or finishes with the process (eval)


class _Trackio:
    def __init__(self, run_dir: Path, run_name: str):
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "ppo-align"), name=_run_id(run_dir), resume="allow")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.trackio.log({**values, "ppo/update": step})

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        self.trackio.log({key: self.trackio.Table(columns=columns, data=rows), "ppo/update": step})

    def close(self) -> None:
        pass


def _run_id(run_dir: Path) -> str:
    return Path(run_dir).resolve().name


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}
