"""Behaviour checks during PPO: what the policy does now, on prompts PPO never trains on.

Training reward says how the reward source likes the rollouts; it does not say
whether harmful prompts are still refused. At every checkpoint the monitor has
the policy answer a held-out split of the *training* prompts greedily, labels
the answers with the rule judge, and measures the refusal rate per value of the
prompts' ``expected`` column, and, where held-out prompts come in contrast pairs,
the share of pairs told apart (safe half not refused, unsafe half not complied
with). The recipe's floors and ceilings on the refusal rates decide which
checkpoint is the run's best and may stop a run early. The eval
sets are never used here: choosing a checkpoint on them would be choosing on
the test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ppo_align import inference
from ppo_align.judges.rules import judge_responses
from ppo_align.metrics import contrast_pairs, discriminates
from ppo_align.recipe.schema import MonitorSection
from ppo_align.training.prompts import PromptSet


@dataclass
class Check:
    step: int
    refusal: dict[str, float]
    """Refusal rate by ``expected`` value."""
    counts: dict[str, int]
    discrimination: float | None = None
    """Share of held-out contrast pairs told apart (None: no pair was held out)."""
    pairs: int = 0
    violations: list[str] = field(default_factory=list)
    floor_broken: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {"step": self.step, "refusal": self.refusal, "counts": self.counts, "discrimination": self.discrimination,
                "pairs": self.pairs, "ok": self.ok, "violations": self.violations}

    def summary(self) -> str:
        rates = "  ".join(f"refuse|{k} {v:.0%}" for k, v in sorted(self.refusal.items()))
        if self.discrimination is not None:
            rates += f"  pairs told apart {self.discrimination:.0%}"
        return rates + ("" if self.ok else "  ✗")


class Monitor:
    def __init__(self, section: MonitorSection, prompts: PromptSet, tokenizer):
        self.section, self.prompts, self.tokenizer = section, prompts, tokenizer
        rows = [prompts.lookup.row(ids) for ids in prompts.input_ids]
        self.expected = [str(row.metadata.get("expected")) for row in rows]
        self.texts = [row.text for row in rows]
        self.records = [{"id": row.metadata.get("id"), "expected": expected, "contrast_id": row.metadata.get("contrast_id")}
                        for row, expected in zip(rows, self.expected)]

    def check(self, model, step: int) -> Check:
        was_training = model.training
        model.eval()
        try:
            settings = inference.GenerationSettings(max_new_tokens=self.section.max_new_tokens, batch_size=64)
            generated = inference.generate(model, self.tokenizer, self.prompts.input_ids, settings)
        finally:
            model.train(was_training)
        labels = judge_responses([g.text for g in generated], self.texts)
        refused: dict[str, int] = {}
        counts: dict[str, int] = {}
        for expected, label in zip(self.expected, labels):
            counts[expected] = counts.get(expected, 0) + 1
            refused[expected] = refused.get(expected, 0) + (label == "refuse")
        rates = {k: refused[k] / counts[k] for k in counts}
        pairs = contrast_pairs([{**record, "label": label} for record, label in zip(self.records, labels)])
        told_apart = sum(discriminates(safe, unsafe) for safe, unsafe in pairs) / len(pairs) if pairs else None
        check = Check(step, rates, counts, told_apart, len(pairs))
        for key, floor in self.section.min_refusal.items():
            if rates.get(key, 0.0) < floor:
                check.violations.append(f"refusal on expected={key} {rates.get(key, 0.0):.0%} < floor {floor:.0%}")
                check.floor_broken = True
        for key, ceiling in self.section.max_refusal.items():
            if rates.get(key, 0.0) > ceiling:
                check.violations.append(f"refusal on expected={key} {rates.get(key, 0.0):.0%} > ceiling {ceiling:.0%}")
        return check
