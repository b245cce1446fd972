"""A reward model trained in the pipeline: TRL's RewardTrainer on preference pairs.

The model is the policy's own base in 4-bit with a LoRA adapter and a scalar
head (the value model's shape), so it shares the policy's tokenizer by
construction and scores the rollout's token ids directly. Pairs are rendered
with the chat template exactly as PPO renders prompts, and each response ends
with the end-of-turn token, as rollouts do. A share of the pairs is held out to
measure how often the trained model prefers the chosen response.

Cached in ``<run>/reward-model/`` while the reward section, model, pairs,
system prompt and seed are unchanged.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from ppo_align import models
from ppo_align.chat import encode_chat, left_pad, user_turn
from ppo_align.data import read_data
from ppo_align.errors import UserError
from ppo_align.recipe.schema import Recipe
from ppo_align.rundir import ADAPTER, RunDir
from ppo_align.training.stages import cached_stage, quiet_logs, stage_key, trainer_args

log = logging.getLogger(__name__)



def cache_key(recipe: Recipe) -> str:
    reward = recipe.reward
    return stage_key(reward.model_dump(mode="json", exclude={"pairs", "normalize", "clip"}),
                     recipe.model.model_dump(mode="json"), models.model_fingerprint(recipe.model.source, recipe.model.revision),
                     recipe.data.system_prompt, recipe.ppo.seed, read_data(recipe, reward.pairs, "reward.pairs").fingerprint())


def ensure_reward_model(recipe: Recipe, model_dir: str, tokenizer, *, progress: bool = True) -> Path:
    """The run's trained reward-model adapter, trained now unless a matching one is cached."""
    def build(directory: Path) -> dict:
        return train_reward_model(recipe, model_dir, tokenizer, directory / ADAPTER, progress=progress)

    return cached_stage(RunDir(recipe.run_dir).reward_model, cache_key(recipe), build) / ADAPTER


def preference_pairs(recipe: Recipe, tokenizer) -> tuple[list[dict], list[dict], int]:
    """(training pairs, held-out pairs, dropped as too long), as chosen_ids / rejected_ids token lists."""
    reward = recipe.reward
    source = read_data(recipe, reward.pairs, "reward.pairs")
    pairs, dropped, bad = [], 0, []
    for line, row in source.rows:
        texts = [row.get(k) for k in ("prompt", "chosen", "rejected")]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            bad.append(line)
            continue
        prompt_ids = encode_chat(tokenizer, user_turn(texts[0], recipe.data.system_prompt))
        chosen, rejected = (prompt_ids + tokenizer(t.strip(), add_special_tokens=False)["input_ids"]
                            + [tokenizer.eos_token_id] for t in texts[1:])
        if max(len(chosen), len(rejected)) > reward.max_length:
            dropped += 1
            continue
        pairs.append({"chosen_ids": chosen, "rejected_ids": rejected})
    if bad:
        shown = ", ".join(source.at(n) for n in bad[:5])
        raise UserError(f"reward.pairs: {len(bad)} rows lack a text prompt, chosen or rejected ({shown}); fix: fill them in")
    if dropped:
        log.warning("reward model: dropped %d pairs longer than reward.max_length = %d tokens", dropped, reward.max_length)
    random.Random(recipe.ppo.seed).shuffle(pairs)
    held = int(len(pairs) * reward.holdout)
    if len(pairs) - held < 1:
        raise UserError(f"reward.pairs = {reward.pairs!r}: no usable pairs to train on; fix: check the file and reward.max_length")
    return pairs[held:], pairs[:held], dropped


def train_reward_model(recipe: Recipe, model_dir: str, tokenizer, output: Path, *, progress: bool = True) -> dict:
    """Train the reward model with TRL's RewardTrainer, save its adapter + head, return what it measured."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    reward = recipe.reward
    train_pairs, held_out, dropped = preference_pairs(recipe, tokenizer)
    set_seed(recipe.ppo.seed)
    # 4-bit base + LoRA + scalar head, with the bitsandbytes CPU workaround (else LoRA silently never learns).
    model = models.load_value_model(recipe.model, None, model_dir, tokenizer)
    args = RewardConfig(**trainer_args(recipe, output.parent, reward, progress=progress))
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_pairs), processing_class=tokenizer)
    quiet_logs(trainer)
    models.keep_trainable_dtype(model, recipe.model)
    log.info("reward model: training on %d preference pairs (%d held out)", len(train_pairs), len(held_out))
    started = time.perf_counter()
    result = trainer.train()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return {
        "pairs": len(train_pairs),
        "held_out": len(held_out),
        "dropped_too_long": dropped,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "train_accuracy": pair_accuracy(model, tokenizer, train_pairs),  # near 0.5: it learned nothing
        "held_out_accuracy": pair_accuracy(model, tokenizer, held_out) if held_out else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def pair_accuracy(model, tokenizer, pairs: list[dict]) -> float:
    """Share of pairs whose chosen response the model scores above the rejected one."""
    import torch

    model.eval()
    wins = 0
    for start in range(0, len(pairs), 16):
        batch = pairs[start:start + 16]
        ids, mask = left_pad([p["chosen_ids"] for p in batch] + [p["rejected_ids"] for p in batch], tokenizer.pad_token_id)
        with torch.no_grad():
            scores = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        wins += int((scores[: len(batch)] > scores[len(batch):]).sum())
    return wins / len(pairs)


def load_trained_reward_model(recipe: Recipe, model_dir: str, tokenizer, adapter: Path):
    """The trained reward model for scoring: the 4-bit base classifier with the saved adapter and head."""
    from peft import PeftModel

    base = models.load_scalar_model(recipe.model, model_dir, tokenizer, training=False)
    return PeftModel.from_pretrained(base, str(adapter)).eval()
