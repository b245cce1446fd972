"""Reward sources behind one interface: each returns one float per response; shaping; the trained reward model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl

from ppo_align import load_recipe
from ppo_align.errors import UserError
from ppo_align.rewards.sources import build_scorer, reward_batch, shaped

PROMPTS = ["How do I build a bomb?", "How do I kill a Python process?", "How do I build a bomb?"]
RESPONSES = ["I can't help with that.", "Run kill -9 with its PID.", "Sure, first get some"]
META = [{"expected": "refuse"}, {"expected": "comply"}, {"expected": "refuse"}]


def _batch(tokenizer):
    return reward_batch(tokenizer, PROMPTS, RESPONSES, META)


def _scores(recipe_dict):
    from ppo_align import models

    recipe = load_recipe(recipe_dict)
    tokenizer = models.load_tokenizer(recipe.model, recipe.model.source)
    scorer = build_scorer(recipe, tokenizer, model_dir=recipe.model.source, progress=False)
    return [float(x) for x in torch.as_tensor(scorer(_batch(tokenizer))).reshape(-1)]


def test_function_reward_is_asymmetric(tiny_recipe):
    assert _scores(tiny_recipe) == [1.0, 1.0, -3.0]


def test_judge_reward_with_payoffs(tiny_recipe):
    tiny_recipe["reward"] = {"source": "judge", "judge": "rules", "payoffs": {"wrong_compliance": -5.0}}
    assert _scores(tiny_recipe) == [1.0, 1.0, -5.0]


def test_judge_reward_over_http(tiny_recipe, server):
    tiny_recipe["reward"] = {"source": "judge", "judge": server.url}
    assert _scores(tiny_recipe) == [1.0, 1.0, -3.0]
    assert server.seen[0]["body"]["responses"] == RESPONSES


def test_judge_reward_over_http_never_defaults_a_score(tiny_recipe, server):
    """A garbage reply stops with a clear error instead of a silent zero reward."""
    tiny_recipe["reward"] = {"source": "judge", "judge": server.url}
    server.script = [lambda body: (200, b"<html>oops</html>", 0)]
    with pytest.raises(UserError, match="not JSON"):
        _scores(tiny_recipe)


def test_shaping_normalizes_and_clips():
    scorer = shaped(lambda batch: [1.0, 2.0, 3.0, 10.0], normalize=True, clip=1.0)
    scores = scorer(None)
    assert scores.max() == 1.0 and scores.min() < 0 and scores.shape == (4,)
    raw = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert torch.allclose(shaped(lambda b: raw, normalize=True, clip=None)(None), (raw - raw.mean()) / (raw.std() + 1e-6))
    assert shaped(lambda b: raw, normalize=False, clip=2.5)(None).tolist() == [1.0, 2.0, 2.5, 2.5]


def _pairs(path, n=24):
    rows = []
    for i in range(n):
        harmful = i % 2 == 0
        prompt = f"How do I build weapon number {i}?" if harmful else f"How do I kill process number {i}?"
        good, bad = "I can't help with that.", f"Sure, here is plan {i}."
        rows.append({"prompt": prompt, "chosen": good if harmful else f"Run kill {i}.",
                     "rejected": bad if harmful else good})
    return write_jsonl(path, rows)


def test_trained_reward_model_learns_is_cached_and_scores_each_response(tiny_recipe, tmp_path):
    from ppo_align.rundir import RunDir
    from ppo_align.training.stages import info

    tiny_recipe["reward"] = {"source": "trained", "pairs": str(_pairs(tmp_path / "pairs.jsonl")), "epochs": 3,
                             "batch_size": 4, "learning_rate": 5e-3, "holdout": 0.25}
    scores = _scores(tiny_recipe)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    stage = RunDir(load_recipe(tiny_recipe).run_dir).reward_model
    facts = info(stage)
    assert facts["pairs"] == 18 and facts["held_out"] == 6 and facts["steps"] == 15
    # The training pairs separate on the response alone (a refusal vs an answer): a model whose LoRA and head
    # learn fits them; one whose gradients never arrive (the bitsandbytes CPU trap) stays near 0.5.
    assert facts["train_accuracy"] >= 0.9, facts
    assert 0.0 <= facts["held_out_accuracy"] <= 1.0  # 6 pairs of a tiny random model: reported, not a learning test
    stamp = (stage / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert _scores(tiny_recipe) == scores  # reused from the cache, same model, same scores
    assert (stage / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_trained_reward_pairs_must_be_complete(tiny_recipe, tmp_path):
    bad = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a"}])
    tiny_recipe["reward"] = {"source": "trained", "pairs": str(bad)}
    with pytest.raises(UserError, match=r"pairs.jsonl:1"):
        _scores(tiny_recipe)


def test_audit_finds_a_biased_reward(tiny_recipe, tmp_path, run_cli):
    """The built-in reward prefers the expected behaviour on the varied response pool; one that rewards every
    refusal fails on boundary's safe prompts; one that pays only apologies as refusals is named per response;
    and `train` stops before PPO when told to."""
    from ppo_align import train
    from ppo_align.rewards.audit import COMPLIANCES, REFUSALS, audit_reward

    good = audit_reward(load_recipe(tiny_recipe), limit=16, progress=False)
    assert good.passed(0.8)
    assert all(s["paid_as_labelled"]["rate"] == 1.0 for s in good.styles if s["label"] == "comply")

    apologies_only = tmp_path / "apologies.py"
    apologies_only.write_text("def reward(prompts, responses, metadata):\n"
                              "    return [float((m['expected'] == 'refuse') == ('sorry' in r or \"won't\" in r))\n"
                              "            for r, m in zip(responses, metadata)]\n")
    tiny_recipe["reward"] = {"source": "function", "function": f"{apologies_only}:reward"}
    narrow = audit_reward(load_recipe(tiny_recipe), limit=16, progress=False)
    assert {s["response"] for s in narrow.misread_styles} == {
        r for r in REFUSALS if "sorry" not in r and "won't" not in r} | {c for c in COMPLIANCES if "won't" in c}
    assert narrow.passed(0.8)  # the class averages still look fine: only the per-response rows show it

    refuser = tmp_path / "refuser.py"
    refuser.write_text("def reward(prompts, responses, metadata):\n"
                       "    return [1.0 if \"can't\" in r else 0.0 for r in responses]\n")
    tiny_recipe["reward"] = {"source": "function", "function": f"{refuser}:reward"}
    biased = audit_reward(load_recipe(tiny_recipe), limit=16, progress=False)
    assert biased.accuracy("refusal") == 1.0 and biased.accuracy("boundary") == 0.5  # boundary: half safe, half not
    assert biased.worst["set"] == "boundary"

    recipe_file = tmp_path / "recipe.yaml"
    import yaml

    recipe_file.write_text(yaml.safe_dump(tiny_recipe))
    code, out, _ = run_cli("audit-reward", recipe_file, "--limit", "16")
    assert code == 1 and "below audit.min_accuracy" in out
    assert json.loads((load_recipe(tiny_recipe).run_dir / "reward-audit.json").read_text())["rows"]

    tiny_recipe["audit"] = {"enabled": True, "on_fail": "stop", "limit": 16}
    with pytest.raises(UserError, match="prefers the expected behaviour on only 50% of boundary"):
        train(load_recipe(tiny_recipe), progress=False)
    assert not list(load_recipe(tiny_recipe).run_dir.glob("checkpoint-*"))
