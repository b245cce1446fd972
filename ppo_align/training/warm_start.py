"""The warm start: QLoRA SFT on demonstrations, whose adapter becomes PPO's reference.

PPO re-weights behaviours a model already produces; it cannot create one. The
embedded model almost never refuses, so a recipe can first teach behaviour by
supervised fine-tuning (TRL's SFTTrainer) and let PPO recalibrate from there.

The adapter is trained on the *same* 4-bit base the policy uses and is kept as
an adapter rather than merged: merging into full-precision weights and
quantizing again erased most of a warm start's behaviour on the 135M model
(FINDINGS: refusal on scary-but-safe prompts 85% → 28%), while the adapter on
the NF4 base keeps it. PPO then loads it twice: frozen as the reference, and as
the trainable policy's starting point.

The stage is cached in ``<run>/warm-start/``: reused while everything that
shaped it (the warm_start section, model section, base weights, demonstrations,
system prompt, seed) is unchanged, retrained otherwise.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ppo_align import models
from ppo_align.chat import encode_chat, user_turn
from ppo_align.data import read_data
from ppo_align.errors import UserError
from ppo_align.recipe.schema import Recipe
from ppo_align.rundir import ADAPTER, RunDir
from ppo_align.training.stages import cached_stage, quiet_logs, stage_key, trainer_args

log = logging.getLogger(__name__)



def cache_key(recipe: Recipe) -> str:
    """Hash of every input that shapes the warm-start adapter."""
    ws = recipe.warm_start
    return stage_key(ws.model_dump(mode="json", exclude={"data"}), recipe.model.model_dump(mode="json"),
                     models.model_fingerprint(recipe.model.source, recipe.model.revision), recipe.data.system_prompt, recipe.ppo.seed,
                     read_data(recipe, ws.data, "warm_start.data").fingerprint())


def ensure_warm_start(recipe: Recipe, model_dir: str, tokenizer, *, progress: bool = True) -> Path:
    """The run's warm-start adapter, trained now unless a matching one is cached."""
    def build(directory: Path) -> dict:
        return train_warm_start(recipe, model_dir, tokenizer, directory / ADAPTER, progress=progress)

    return cached_stage(RunDir(recipe.run_dir).warm_start, cache_key(recipe), build) / ADAPTER


def demonstrations(recipe: Recipe, tokenizer):
    """The demonstrations as token ids with a completion mask (loss on the response only).

    Prompts are rendered exactly as PPO and eval render them, so the warm start learns
    the same prompt format it will be asked in.
    """
    from datasets import Dataset

    ws = recipe.warm_start
    source = read_data(recipe, ws.data, "warm_start.data")
    rows, dropped, problems = [], 0, []
    for line, row in source.rows:
        prompt, response = row.get(ws.prompt_field), row.get(ws.response_field)
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(response, str) or not response.strip():
            problems.append(line)
            continue
        prompt_ids = encode_chat(tokenizer, user_turn(prompt, recipe.data.system_prompt))
        response_ids = tokenizer(response.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(prompt_ids) + len(response_ids) > ws.max_length:
            dropped += 1
            continue
        rows.append({"input_ids": prompt_ids + response_ids,
                     "completion_mask": [0] * len(prompt_ids) + [1] * len(response_ids)})
    if problems:
        shown = ", ".join(source.at(n) for n in problems[:5])
        raise UserError(f"warm_start.data: {len(problems)} rows lack a text {ws.prompt_field!r} or {ws.response_field!r} "
                        f"({shown}); fix: fill them in, or set warm_start.prompt_field / response_field")
    if dropped:
        log.warning("warm start: dropped %d demonstrations longer than warm_start.max_length = %d tokens", dropped, ws.max_length)
    if not rows:
        raise UserError(f"warm_start.data = {ws.data!r}: no usable demonstrations; fix: check the file and warm_start.max_length")
    return Dataset.from_list(rows), dropped


def train_warm_start(recipe: Recipe, model_dir: str, tokenizer, output: Path, *, progress: bool = True) -> dict:
    """Train the warm-start LoRA with TRL's SFTTrainer and save it to ``output``; return what it measured."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    ws = recipe.warm_start
    dataset, dropped = demonstrations(recipe, tokenizer)
    set_seed(recipe.ppo.seed)
    # The policy's own loader: same 4-bit base, same LoRA shape, and the bitsandbytes CPU workaround
    # without which the adapter would silently learn nothing.
    model = models.load_policy(recipe.model, model_dir, tokenizer)
    args = SFTConfig(completion_only_loss=True, **trainer_args(recipe, output.parent, ws, progress=progress))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    quiet_logs(trainer)
    models.keep_trainable_dtype(model, recipe.model)
    log.info("warm start: SFT on %d demonstrations for %s epochs", len(dataset), ws.epochs)
    started = time.perf_counter()
    result = trainer.train()
    model.save_pretrained(output)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "demonstrations": len(dataset),
        "dropped_too_long": dropped,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
