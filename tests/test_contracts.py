"""Contracts every implementation keeps, checked on each one: every judge kind, every reward source, and the
keywords ppo_align hands to TRL's PPOConfig.

A judge (rules, the learned judge, a local classifier, an HTTP service) is a ``Judge``, names itself ``name@version`` the same way
each time it is built, gives exactly one known label per response, refuses prompts and responses that do not
pair up, and raises when its backend fails instead of inventing a label. A reward source (function, judge,
trained, model) scores each response with one finite float and raises when its backend fails instead of
inventing a score.
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch
from conftest import tiny_classifier, write_jsonl

from ppo_align import load_recipe
from ppo_align.errors import UserError
from ppo_align.judges import build_judge
from ppo_align.judges.base import LABELS, Judge
from ppo_align.rewards.sources import build_scorer, reward_batch

PROMPTS = ["how do i make a bomb ?", "paris ?", "how do i make a bomb ?", "how do i help ?", "paris ?"]
RESPONSES = ["i can't help with that .", "paris .", "a bomb , make a bomb", "", "I can't."]
META = [{"expected": "refuse"}, {"expected": "comply"}, {"expected": "refuse"}, {"expected": "comply"},
        {"expected": "comply"}]

# --------------------------------------------------------------------------- judges

JUDGE_KINDS = ["rules", "learned", "classifier", "http"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("judge") / "tiny-judge", {0: "comply", 1: "partial", 2: "refuse"})


def _judge_spec(kind, request) -> str:
    """What build_judge (and a recipe's reward.judge) takes for each kind of judge."""
    if kind in ("rules", "learned"):
        return kind
    if kind == "classifier":
        return str(request.getfixturevalue("classifier_dir"))
    return request.getfixturevalue("server").url


@pytest.mark.parametrize("kind", JUDGE_KINDS)
def test_judge_is_a_judge_with_a_stable_name_and_version(kind, request):
    judge = build_judge(_judge_spec(kind, request))
    assert isinstance(judge, Judge)
    assert not isinstance(object(), Judge)  # the protocol is checked at run time, not just declared
    assert isinstance(judge.name, str) and judge.name.strip()
    assert isinstance(judge.version, str) and judge.version.strip()
    again = build_judge(_judge_spec(kind, request))
    assert f"{again.name}@{again.version}" == f"{judge.name}@{judge.version}"  # caches key on it


@pytest.mark.parametrize("n", [0, 1, 5])
@pytest.mark.parametrize("kind", JUDGE_KINDS)
def test_judge_gives_one_known_label_per_response(kind, n, request):
    judge = build_judge(_judge_spec(kind, request), batch_size=2)  # several batches for the batched kinds
    labels = judge.label(PROMPTS[:n], RESPONSES[:n])
    assert isinstance(labels, list) and len(labels) == n
    assert all(label in LABELS for label in labels), labels


@pytest.mark.parametrize("kind", JUDGE_KINDS)
@pytest.mark.parametrize("prompts, responses", [(PROMPTS[:2], RESPONSES[:1]), (PROMPTS[:1], RESPONSES[:2]),
                                                (PROMPTS[:1], [])])
def test_judge_refuses_prompts_and_responses_that_do_not_pair_up(kind, prompts, responses, request):
    judge = build_judge(_judge_spec(kind, request))
    with pytest.raises(ValueError, match="must pair up"):
        judge.label(prompts, responses)
    if kind == "http":
        assert request.getfixturevalue("server").seen == []  # refused before anything was sent


def _corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"\xff" * 64)  # a header length with no header behind it


JUDGE_FAILURES = {
    "http-500": ("http", lambda server, path: server.script.extend([lambda body: (500, b"oops", 0)] * 2),
                 UserError, "no answer after 2 tries"),
    "http-garbage": ("http", lambda server, path: server.script.append(lambda body: (200, b"<html>oops</html>", 0)),
                     UserError, "not JSON"),
    "classifier-weights-missing": ("classifier", lambda server, path: (path / "model.safetensors").unlink(),
                                   UserError, "no weights"),
    "classifier-weights-corrupt": ("classifier", lambda server, path: _corrupt(path / "model.safetensors"),
                                   UserError, "not a safetensors file"),
}


@pytest.mark.parametrize("failure", list(JUDGE_FAILURES))
def test_a_failing_judge_backend_raises_instead_of_labelling(failure, request, tmp_path):
    kind, break_it, error, match = JUDGE_FAILURES[failure]
    server = request.getfixturevalue("server") if kind == "http" else None
    path = None
    if kind == "classifier":
        path = tmp_path / "judge"
        shutil.copytree(request.getfixturevalue("classifier_dir"), path)
    break_it(server, path)
    labels = None
    with pytest.raises(error, match=match):
        judge = build_judge(str(path) if path else server.url, retries=1, backoff=0.01)
        labels = judge.label(PROMPTS[:2], RESPONSES[:2])
    assert labels is None


# --------------------------------------------------------------------------- reward sources


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    """A one-label sequence-classification head on the tiny model, with the policy's tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("reward-model") / "rm"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def _pairs(path, n=8):
    return write_jsonl(path, [{"prompt": f"How do I build weapon number {i}?" if i % 2 == 0 else f"Name colour {i}.",
                               "chosen": "I can't help with that." if i % 2 == 0 else "Blue.",
                               "rejected": f"Sure, here is plan {i}." if i % 2 == 0 else "I can't help with that."}
                              for i in range(n)])


def _reward_section(source, request, tmp_path) -> dict:
    """A recipe's reward section for each reward source (and each judge kind behind the judge source)."""
    if source == "function":
        return {"source": "function", "function": "ppo_align.rewards:expected_behaviour"}
    if source.startswith("judge-"):
        return {"source": "judge", "judge": _judge_spec(source.removeprefix("judge-"), request), "retries": 0}
    if source == "trained":
        return {"source": "trained", "pairs": str(_pairs(tmp_path / "pairs.jsonl")), "epochs": 1, "batch_size": 4,
                "holdout": 0.0}
    return {"source": "model", "path": str(request.getfixturevalue("reward_model_dir"))}


def _scorer(recipe_dict):
    """The recipe's reward as PPO gets it, and a function that scores the first n responses with it."""
    from ppo_align import models

    recipe = load_recipe(recipe_dict)
    tokenizer = models.load_tokenizer(recipe.model, recipe.model.source)
    scorer = build_scorer(recipe, tokenizer, model_dir=recipe.model.source, progress=False)
    return lambda n=len(RESPONSES): scorer(reward_batch(tokenizer, PROMPTS[:n], RESPONSES[:n], META[:n]))


REWARD_SOURCES = ["function", *(f"judge-{kind}" for kind in JUDGE_KINDS), "model",
                  pytest.param("trained", marks=pytest.mark.slow)]  # trains a reward model first (~10 s)


@pytest.mark.parametrize("source", REWARD_SOURCES)
def test_reward_source_gives_one_finite_float_per_response(source, tiny_recipe, request, tmp_path):
    tiny_recipe["reward"] = _reward_section(source, request, tmp_path)
    score = _scorer(tiny_recipe)
    for n in (1, len(RESPONSES)):
        scores = torch.as_tensor(score(n), dtype=torch.float64)
        assert scores.shape == (n,), f"{tuple(scores.shape)} scores for {n} responses"
        assert all(math.isfinite(s) for s in scores.tolist()), scores


def _raising_function(request, tmp_path) -> dict:
    module = tmp_path / "raising_reward.py"
    module.write_text("def reward(prompts, responses, metadata):\n    raise RuntimeError('reward backend down')\n")
    return {"source": "function", "function": f"{module}:reward"}


def _http_judge_failing(reply):
    def section(request, tmp_path):
        server = request.getfixturevalue("server")
        server.script.extend([reply] * 2)
        return {"source": "judge", "judge": server.url, "retries": 1, "backoff": 0.01}
    return section


def _classifier_judge_corrupt(request, tmp_path):
    path = tmp_path / "judge"
    shutil.copytree(request.getfixturevalue("classifier_dir"), path)
    _corrupt(path / "model.safetensors")
    return {"source": "judge", "judge": str(path)}


def _reward_model_corrupt(request, tmp_path):
    path = tmp_path / "rm"
    shutil.copytree(request.getfixturevalue("reward_model_dir"), path)
    _corrupt(path / "model.safetensors")
    return {"source": "model", "path": str(path)}


REWARD_FAILURES = {
    "function-raises": (_raising_function, RuntimeError, "reward backend down"),
    "judge-http-500": (_http_judge_failing(lambda body: (500, b"oops", 0)), UserError, "no answer after 2 tries"),
    "judge-http-garbage": (_http_judge_failing(lambda body: (200, b"<html>oops</html>", 0)), UserError, "not JSON"),
    "judge-classifier-corrupt": (_classifier_judge_corrupt, UserError, "not a safetensors file"),
    "model-corrupt": (_reward_model_corrupt, UserError, "reward.path"),
}


@pytest.mark.parametrize("failure", list(REWARD_FAILURES))
def test_a_failing_reward_backend_raises_instead_of_scoring(failure, tiny_recipe, request, tmp_path):
    section, error, match = REWARD_FAILURES[failure]
    tiny_recipe["reward"] = section(request, tmp_path)
    scores = None
    with pytest.raises(error, match=match):
        scores = _scorer(tiny_recipe)()
    assert scores is None


# --------------------------------------------------------------------------- TRL's PPOConfig


@pytest.mark.parametrize("variant", ["default", "warm-start", "bfloat16"])
def test_every_keyword_given_to_ppoconfig_is_a_field_of_the_installed_trl(variant, tiny_recipe, tmp_path, monkeypatch):
    """build_config passes PPOConfig keywords by name; a TRL upgrade that renames or drops one must fail here,
    with the names, rather than at the start of a training run."""
    from trl.experimental.ppo import PPOConfig

    from ppo_align.training import ppo  # first: it silences TRL's warning on importing trl.experimental

    assert ppo.PPOConfig is PPOConfig  # ppo_align builds the installed TRL's class, not a copy
    if variant == "warm-start":  # adds the adapter names TRL switches between for reference passes
        demos = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "Name a colour.", "response": "Blue."}] * 4)
        tiny_recipe["warm_start"] = {"data": str(demos), "epochs": 1, "batch_size": 2}
    if variant == "bfloat16":  # the precision flags
        tiny_recipe["model"]["quantization"] = {"compute_dtype": "bfloat16"}
    calls = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return PPOConfig(*args, **kwargs)

    monkeypatch.setattr(ppo, "PPOConfig", recording)
    config = ppo.build_config(load_recipe(tiny_recipe), tmp_path / "run")
    assert isinstance(config, PPOConfig) and len(calls) == 1
    args, kwargs = calls[0]
    assert not args, "PPOConfig is given positional arguments"
    fields = {f.name for f in dataclasses.fields(PPOConfig) if f.init}
    assert kwargs and set(kwargs) <= fields, f"not fields of TRL's PPOConfig: {sorted(set(kwargs) - fields)}"
    if variant == "warm-start":
        assert {"model_adapter_name", "ref_adapter_name"} <= set(kwargs)
