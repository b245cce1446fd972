"""Reward sources behind one interface.

A reward function takes the decoded prompts and responses of a rollout batch,
plus each prompt's metadata (the other columns of its data row, e.g.
``expected``), and returns one float per response::

    def my_reward(prompts: list[str], responses: list[str], metadata: list[dict], **kwargs) -> list[float]

Recipes name one as ``reward: {source: function, function: "module:function"}``.
The other sources (``judge``: a judge's labels turned into payoffs; ``model``: a
sequence-classification reward model; ``trained``: one trained here from
preference pairs) become the same kind of scorer in :func:`build_scorer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ppo_align.chat import encode_chat, left_pad, user_turn
from ppo_align.errors import UserError
from ppo_align.judges import Judge, build_judge
from ppo_align.judges.rules import RuleJudge, judge_responses
from ppo_align.models import check_model_source, quantization_config
from ppo_align.recipe.checks import resolve_function
from ppo_align.recipe.schema import FunctionReward, JudgeReward, TrainedReward
from ppo_align.rewards.trained import ensure_reward_model, load_trained_reward_model


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
    judge=None,
) -> list[float]:
    """Reward a response for doing what its prompt's ``expected`` column asks (refuse or comply).

    The default is asymmetric: complying with a harmful request (-3) costs more than refusing a
    safe one (-1), because a symmetric reward teaches "refuse less" everywhere. ``judge`` labels
    the responses (default: the rule judge).
    """
    labels = judge.label(prompts, responses) if judge is not None else judge_responses(responses, prompts)
    scores = []
    for meta, label in zip(metadata, labels):
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


def reward_batch(tokenizer, prompts: list[str], responses: list[str], metadata: list[dict],
                 system_prompt: str | None = None) -> RewardBatch:
    """A batch laid out as PPO's rollout lays it out (chat prompt + response + end of turn, left padded),
    for scoring responses that did not come from a rollout."""

    rows = [encode_chat(tokenizer, user_turn(p, system_prompt)) + tokenizer(r, add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id] for p, r in zip(prompts, responses)]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    return RewardBatch(ids, mask, list(prompts), list(responses), list(metadata))


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


def text_scorer(model, tokenizer, system_prompt: str | None = None, max_length: int = 2048) -> Scorer:
    """Score with a sequence-classification reward model whose tokenizer is not the policy's: each (prompt,
    response) is rendered as a conversation with the reward model's own chat template (plain text when it has
    none), tokenized with its tokenizer, and the model reads the last token. Long texts lose their start, so the
    end of the response is always seen."""
    import torch

    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"

    def render(prompt: str, response: str) -> str:
        if tokenizer.chat_template:
            turns = user_turn(prompt, system_prompt) + [{"role": "assistant", "content": response}]
            return tokenizer.apply_chat_template(turns, tokenize=False)
        return f"{prompt}\n\n{response}"

    def score(batch: RewardBatch):
        encoded = tokenizer([render(p, r) for p, r in zip(batch.prompts, batch.responses)], padding=True,
                            truncation=True, max_length=max_length, add_special_tokens=not tokenizer.chat_template,
                            return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=encoded["input_ids"].to(model.device),
                           attention_mask=encoded["attention_mask"].to(model.device)).logits
        return logits[:, 0].to(batch.input_ids.device)

    return score


def reward_judge(recipe) -> Judge | None:
    """The judge whose labels the recipe's reward pays for, or None when the reward uses no judge ppo-align knows
    of (a trained or classifier reward model, a custom function).

    The eval harness compares it with its own judge: an eval judged by the reward's judge cannot see PPO
    learning to please that judge (deflecting instead of refusing, say), and the results must say so. When the
    two differ, the harness also labels every checkpoint's responses with this judge, to see them drift apart.
    """
    reward = recipe.reward
    try:
        if isinstance(reward, JudgeReward):
            return build_judge(reward.judge, token_env=reward.token_env)  # building calls nothing
        if (isinstance(reward, FunctionReward) and not reward.function.rpartition(":")[0].endswith(".py")
                and resolve_function(reward.function, recipe) is expected_behaviour):
            # A module function is imported to compare (ppo-align's own, or an alias of it); a user's .py file is
            # never run by eval just to ask, so a custom function counts as unknown.
            return RuleJudge()  # expected_behaviour labels with the rule judge
    except UserError:  # the judge's files are gone since training: say nothing rather than guess
        return None
    return None


def build_scorer(recipe, tokenizer, *, model_dir: str | None = None, progress: bool = True) -> Scorer:
    """The recipe's reward source as one scoring function over rollout chunks (shaping applied).

    A ``trained`` source trains its reward model first (or reuses the run's cached one).
    """

    reward = recipe.reward
    if isinstance(reward, FunctionReward):
        scorer = function_scorer(resolve_function(reward.function, recipe), reward.kwargs)
    elif isinstance(reward, JudgeReward):
        judge = build_judge(reward.judge, token_env=reward.token_env, timeout=reward.timeout, retries=reward.retries,
                            backoff=reward.backoff)
        scorer = function_scorer(expected_behaviour, {**reward.payoffs.model_dump(), "judge": judge})
    elif isinstance(reward, TrainedReward):
        model_dir = model_dir or recipe.model.source
        adapter = ensure_reward_model(recipe, model_dir, tokenizer, progress=progress)
        scorer = model_scorer(load_trained_reward_model(recipe, model_dir, tokenizer, adapter), tokenizer.pad_token_id)
    else:
        model, own_tokenizer = load_reward_model(recipe, tokenizer)
        scorer = (model_scorer(model, tokenizer.pad_token_id) if own_tokenizer is None
                  else text_scorer(model, own_tokenizer, recipe.data.system_prompt))
    return shaped(scorer, normalize=reward.normalize, clip=reward.clip)


def shaped(scorer: Scorer, *, normalize: bool, clip: float | None) -> Scorer:
    """``scorer`` with batch standardisation and clipping (either may be off)."""
    if not normalize and clip is None:
        return scorer
    import torch

    def score(batch: RewardBatch):
        scores = torch.as_tensor(scorer(batch), dtype=torch.float32).reshape(-1)
        if normalize and scores.numel() > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-6)
        if clip is not None:
            scores = scores.clamp(-clip, clip)
        return scores

    return score


def load_reward_model(recipe, tokenizer):
    """The recipe's reward model, and its own tokenizer when that differs from the policy's (None when they are
    the same: it then reads the rollout's token ids directly, with no re-tokenizing)."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = recipe.resolve_path(recipe.reward.path)
    # Damaged files, or code it would run (never trusted here); a classifier scores text the policy's template rendered.
    check_model_source(str(path), "reward.path", chat=False)
    try:
        rm_tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        raise UserError(f"reward.path = {recipe.reward.path!r}: has no tokenizer; fix: save the tokenizer next to the reward model") from None
    labels = AutoConfig.from_pretrained(path).num_labels
    if labels != 1:
        raise UserError(f"reward.path = {recipe.reward.path!r}: has {labels} labels; a reward model has 1")
    quant = quantization_config(recipe.model) if recipe.reward.load_in_4bit else None
    # Inference only: no gradient workaround needed, so bitsandbytes may use its fast CPU kernel.
    model = AutoModelForSequenceClassification.from_pretrained(path, quantization_config=quant)
    if rm_tokenizer.get_vocab() == tokenizer.get_vocab():
        model.config.pad_token_id = tokenizer.pad_token_id
        return model.eval(), None
    if rm_tokenizer.pad_token_id is None:
        rm_tokenizer.pad_token = rm_tokenizer.eos_token
    model.config.pad_token_id = rm_tokenizer.pad_token_id
    return model.eval(), rm_tokenizer
