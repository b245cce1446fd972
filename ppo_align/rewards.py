"""Reward sources behind one interface.

A reward function takes the decoded prompts and responses of a rollout batch,
plus each prompt's metadata (the other columns of its data row, e.g.
``expected``), and returns one float per response::

    def my_reward(prompts: list[str], responses: list[str], metadata: list[dict], **kwargs) -> list[float]

Recipes name one as ``reward: {source: function, function: "module:function"}``.
"""

from __future__ import annotations

from typing import Callable, Protocol

from ppo_align.judges import judge_responses


class RewardFunction(Protocol):
    def __call__(self, prompts: list[str], responses: list[str], metadata: list[dict], **kwargs) -> list[float]: ...


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
    for meta, label in zip(metadata, judge_responses(responses)):
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


BUILTIN: dict[str, Callable] = {"expected_behaviour": expected_behaviour}
