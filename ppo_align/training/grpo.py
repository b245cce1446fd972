"""GRPO on TRL's GRPOTrainer: the only module that imports it (the run around it is in
:mod:`~ppo_align.training.grouped`).

GRPO scores each response against its group's mean reward (scaled by the group's spread) and adds the KL to
the reference to the loss, per token.
"""

from __future__ import annotations

from pathlib import Path

from trl import GRPOConfig, GRPOTrainer

from ppo_align.recipe.schema import Recipe
from ppo_align.training.grouped import RunTrainer, common_config


class Trainer(RunTrainer, GRPOTrainer):
    """TRL's GRPOTrainer with the run's hooks."""


def build_config(recipe: Recipe, run_dir: Path) -> GRPOConfig:
    return GRPOConfig(**common_config(recipe, run_dir))
