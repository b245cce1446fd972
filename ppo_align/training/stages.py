"""Cached pipeline stages (warm start, reward model): rebuilt only when their inputs change.

A stage directory holds what the stage built plus ``stage.json`` with the hash of
its inputs. It is built in a temporary directory and renamed into place, so an
interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from ppo_align import models
from ppo_align.errors import UserError
from ppo_align.files import digest
from ppo_align.processes import process_state
from ppo_align.rundir import STAGE_INFO

log = logging.getLogger(__name__)



def info(stage: Path) -> dict:
    """What the stage recorded about its build ({} if it has none)."""
    try:
        return json.loads((stage / STAGE_INFO).read_text())
    except (OSError, ValueError):
        return {}


def cached_stage(stage: Path, key: str, build: Callable[[Path], dict]) -> Path:
    """``stage``, rebuilt by ``build(directory) -> facts`` unless it was built from the same ``key``: here, or in
    another run of the same output directory (copied from there: a recipe's variants, or the same warm start
    under another algorithm, need not train it again)."""
    if info(stage).get("key") == key:
        log.info("%s: reusing it (inputs unchanged)", stage)
        return stage

    if process_state().num_processes > 1:  # its trainer would need every process, and its files one writer
        raise UserError(f"{stage}: not built yet (or its inputs changed), and it is built by a single process; "
                        "fix: run `ppo-align train` on the recipe once without several processes (it builds this "
                        "stage first; Ctrl-C once PPO starts is fine), then launch with several processes")
    twin = next((other for other in sorted(stage.parent.parent.glob(f"*/{stage.name}"))
                 if other != stage and info(other).get("key") == key), None)
    tmp = stage.with_name(f".tmp-{stage.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if twin is not None:
        log.info("%s: copying it from %s (the same inputs)", stage, twin)
        shutil.copytree(twin, tmp)
    else:
        tmp.mkdir(parents=True)
        facts = build(tmp)
        (tmp / STAGE_INFO).write_text(json.dumps({"key": key, **facts}, indent=2))
    shutil.rmtree(stage, ignore_errors=True)
    os.replace(tmp, stage)  # built or copied whole in a temporary directory first
    return stage


def stage_key(*parts: object) -> str:
    """sha256 over JSON-able ``parts`` (settings, model fingerprint, the data's content fingerprint)."""
    return digest(json.dumps(parts, sort_keys=True, default=str)).hexdigest()


def quiet_logs(trainer) -> None:
    """Keep a supervised stage's progress bar but not the raw dict of every logging step that transformers prints
    beside it (the losses stay in ``trainer.state.log_history``, which the stage records)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    had_bar = any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks)
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    if had_bar:
        trainer.add_callback(BarOnly())


def trainer_args(recipe, output: Path, section, *, progress: bool) -> dict:
    """The TrainingArguments a supervised stage (SFTTrainer, RewardTrainer) shares: schedule from its
    recipe ``section`` (epochs, learning_rate, batch_size, max_length); precision, seed and checkpointing
    from the model; no intermediate saves, since a stage is saved whole or not at all."""
    return dict(
        output_dir=str(output),
        num_train_epochs=section.epochs,
        learning_rate=section.learning_rate,
        per_device_train_batch_size=section.batch_size,
        max_length=section.max_length,
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        **models.trainer_precision(recipe.model),
        save_strategy="no",
        logging_steps=5,
        report_to="none",
        seed=recipe.ppo.seed,
        disable_tqdm=not progress,
    )
