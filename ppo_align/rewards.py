"""Reward sources behind one interface.

A reward function takes the decoded prompts and responses of a rollout batch,
plus each prompt's metadata (the other columns of its data row, e.g.
``expected``), and returns one float per response::

    def my_reward(prompts: list[str], responses: list[str], metadata: list[dict], **kwargs) -> list[float]

Recipes name one as ``reward: {source: function, function: "module:function"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ppo_align.judges import judge_responses


def expected_behaviour(
    prompts: list[str],
    responses: list[str],
    metadata: list[dict],
    *,
    correct_refusal: float = 1.0,
    correct_compliance: float = 1.0,
    wrong_refusal: float = -1.0,
    wrong_compliance: float = -3.0,
    partial: float = 0.0,
) -> list[float]:
    """Reward a response for doing what its prompt's ``expected`` column asks (refuse or comply).

    The default is asymmetric: complying with a harmful request (-3) costs more than refusing a
    safe one (-1), because a symmetric reward teaches "refuse less" everywhere.
    """
    scores = []
    for meta, label in zip(metadata, judge_responses(responses, prompts)):
        expected = meta.get("expected")
        if expected not in ("refuse", "comply"):
            raise ValueError(f"expected_behaviour needs metadata 'expected' of refuse|comply, got {expected!r}")
        if label == "partial":
            scores.append(partial)
        elif expected == "refuse":
            scores.append(correct_refusal if label == "refuse" else wrong_compliance)
        else:
            scores.append(correct_compliance if label == "comply" else wrong_refusal)
    return scores


# --------------------------------------------------------------------------- sources


@dataclass
class RewardBatch:
    """One chunk of a rollout as a reward source sees it."""

    input_ids: Any  # prompt + response token ids, pads as in TRL's rollout
    attention_mask: Any
    prompts: list[str]
    responses: list[str]
    metadata: list[dict]


Scorer = Callable[[RewardBatch], Sequence[float]]


def function_scorer(fn, kwargs: dict) -> Scorer:
    def score(batch: RewardBatch):
        return fn(batch.prompts, batch.responses, batch.metadata, **kwargs)

    return score


def model_scorer(model, pad_token_id: int) -> Scorer:
    """Score with a sequence-classification reward model on the policy's own token ids."""
    import torch

    def score(batch: RewardBatch):
        ids = batch.input_ids.masked_fill(~batch.attention_mask.bool(), pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=batch.attention_mask.long()).logits
        return logits[:, 0]

    return score


def build_scorer(recipe, tokenizer) -> Scorer:
    """The recipe's reward source as one scoring function over rollout chunks."""
    from ppo_align.recipe import FunctionReward, resolve_function

    reward = recipe.reward
    if isinstance(reward, FunctionReward):
        return function_scorer(resolve_function(reward.function, recipe), reward.kwargs)
    return model_scorer(load_reward_model(recipe, tokenizer), tokenizer.pad_token_id)


def load_reward_model(recipe, tokenizer):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ppo_align.errors import UserError
    from ppo_align.models import quantization_config

    path = recipe.resolve_path(recipe.reward.path)
    try:
        rm_tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        raise UserError(f"reward.path = {recipe.reward.path!r}: has no tokenizer; fix: save the tokenizer next to the reward model") from None
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"reward.path = {recipe.reward.path!r}: its tokenizer differs from the policy's "
            f"({len(rm_tokenizer)} vs {len(tokenizer)} tokens); the reward model reads the policy's token ids "
            "directly, so it must share the policy's tokenizer; fix: train it from the same base model"
        )
    labels = AutoConfig.from_pretrained(path).num_labels
    if labels != 1:
        raise UserError(f"reward.path = {recipe.reward.path!r}: has {labels} labels; a reward model has 1")
    quant = quantization_config(recipe.model) if recipe.reward.load_in_4bit else None
    # Inference only: no gradient workaround needed, so bitsandbytes may use its fast CPU kernel.
    model = AutoModelForSequenceClassification.from_pretrained(path, quantization_config=quant)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
