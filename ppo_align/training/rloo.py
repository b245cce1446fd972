"""RLOO on TRL's RLOOTrainer: the only module that imports it (the run around it is in
:mod:`~ppo_align.training.grouped`).

RLOO's baseline for each response is the mean reward of the other samples of its prompt (leave one out),
and the KL to the reference is subtracted from the reward, per response, as in PPO.
"""

from __future__ import annotations

from pathlib import Path

from trl import RLOOConfig, RLOOTrainer

from ppo_align.recipe.schema import Recipe
from ppo_align.training.grouped import RunTrainer, common_config


class Trainer(RunTrainer, RLOOTrainer):
    """TRL's RLOOTrainer with the run's hooks."""


def build_config(recipe: Recipe, run_dir: Path) -> RLOOConfig:
    return RLOOConfig(**common_config(recipe, run_dir))
