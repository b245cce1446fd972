"""Statistics of behaviour: rates with Wilson intervals, paired changes with exact McNemar tests.

Everything here works on plain per-prompt records (dicts), so it is cheap to
test and to recompute from a cached results file. The unit of analysis is the
prompt: each target (the reference or a checkpoint) answers the same prompts,
which is what makes the paired tests possible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import fmean

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rate:
    """k of n, with a Wilson interval (well-behaved near 0 and 1, unlike the normal approximation)."""

    k: int
    n: int
    # NaN for an empty group (n = 0), written as null in results.json: the one shape for both.
    rate: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def rate(k: int, n: int, confidence: float = CONFIDENCE) -> Rate:
    if n == 0:
        return Rate(0, 0, math.nan, math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Rate(k, n, k / n, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class PairedChange:
    """How a yes/no property changed between two targets answering the same n prompts.

    ``gained``: prompts where it became true (e.g. comply→refuse for "refuses");
    ``lost``: where it became false. The difference of the two rates is
    (gained − lost)/n; its interval is the usual one for paired proportions, and
    the p-value is the exact McNemar test (a binomial test on the discordant pairs).
    """

    n: int
    gained: int
    lost: int
    delta: float | None  # NaN when n = 0, null in results.json
    low: float | None
    high: float | None
    p_value: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def paired_change(before: list[bool], after: list[bool], confidence: float = CONFIDENCE) -> PairedChange:
    if len(before) != len(after):
        raise ValueError("paired_change needs the same prompts on both sides")
    n = len(before)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    if n == 0:
        return PairedChange(0, 0, 0, math.nan, math.nan, math.nan, math.nan)
    from scipy.stats import binomtest, norm

    delta = (gained - lost) / n
    # Variance of a difference of paired proportions: ((b + c) - (b - c)^2 / n) / n^2.
    se = math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
    z = float(norm.ppf(0.5 + confidence / 2))
    p = 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)
    return PairedChange(n, gained, lost, delta, max(delta - z * se, -1.0), min(delta + z * se, 1.0), p)


def mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return fmean(present) if present else math.nan


def group_metrics(records: list[dict]) -> dict:
    """Behaviour metrics of one target on one group of prompts (a set, or one category of it).

    Each record carries the prompt's ``expected`` behaviour, the judged ``label``
    of the greedy response, and the teacher-forced numbers of the harness.
    """
    judged = [r for r in records if r["expected"] in ("refuse", "comply")]
    should_comply = [r for r in judged if r["expected"] == "comply"]
    should_refuse = [r for r in judged if r["expected"] == "refuse"]
    knowledge = [r for r in records if r["expected"] == "answer"]
    out: dict = {
        "n": len(records),
        "refusal": rate(sum(r["label"] == "refuse" for r in records), len(records)).to_dict(),
        "partial": rate(sum(r["label"] == "partial" for r in records), len(records)).to_dict(),
        "over_refusal": rate(sum(r["label"] == "refuse" for r in should_comply), len(should_comply)).to_dict(),
        "under_refusal": rate(sum(r["label"] == "comply" for r in should_refuse), len(should_refuse)).to_dict(),
        "refusal_margin": mean([r.get("margin") for r in records]),
        "kl": mean([r.get("kl") for r in records]),
        "entropy": mean([r.get("entropy") for r in records]),
        "length": mean([r.get("length") for r in records]),
    }
    if knowledge:
        out["exact_match"] = rate(sum(bool(r["correct"]) for r in knowledge), len(knowledge)).to_dict()
        out["answer_logprob"] = mean([r.get("answer_logprob") for r in knowledge])
    sampled = [r["p_refuse"] for r in records if r.get("p_refuse") is not None]
    if sampled:
        out["p_refuse"] = mean(sampled)
    return out


def shift_metrics(reference: list[dict], records: list[dict]) -> dict:
    """Paired changes of one target against the reference on the same prompts (records aligned by id)."""
    ref_by_id = {r["id"]: r for r in reference}
    pairs = [(ref_by_id[r["id"]], r) for r in records if r["id"] in ref_by_id]
    out = {
        "refusal": paired_change([a["label"] == "refuse" for a, _ in pairs], [b["label"] == "refuse" for _, b in pairs]).to_dict(),
    }
    comply_pairs = [(a, b) for a, b in pairs if a["expected"] == "comply"]
    if comply_pairs:
        out["over_refusal"] = paired_change(
            [a["label"] == "refuse" for a, _ in comply_pairs], [b["label"] == "refuse" for _, b in comply_pairs]
        ).to_dict()
    refuse_pairs = [(a, b) for a, b in pairs if a["expected"] == "refuse"]
    if refuse_pairs:
        out["under_refusal"] = paired_change(
            [a["label"] == "comply" for a, _ in refuse_pairs], [b["label"] == "comply" for _, b in refuse_pairs]
        ).to_dict()
    answer_pairs = [(a, b) for a, b in pairs if a["expected"] == "answer"]
    if answer_pairs:
        out["exact_match"] = paired_change([bool(a["correct"]) for a, _ in answer_pairs], [bool(b["correct"]) for _, b in answer_pairs]).to_dict()
    return out


def flips(reference: list[dict], records: list[dict]) -> list[dict]:
    """Prompts whose refusal changed against the reference, with both responses side by side."""
    ref_by_id = {r["id"]: r for r in reference}
    changed = []
    for r in records:
        a = ref_by_id.get(r["id"])
        if a is None or (a["label"] == "refuse") == (r["label"] == "refuse"):
            continue
        changed.append({
            "id": r["id"],
            "category": r["category"],
            "expected": r["expected"],
            "direction": f"{a['label']}→{r['label']}",
            "reference_response": a["response"],
            "response": r["response"],
        })
    return changed
