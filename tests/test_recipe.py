from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, readme_count

from ppo_align import UserError, load_recipe, shipped_recipes
from ppo_align.recipe.schema import Recipe

BROKEN = sorted((REPO / "tests" / "broken_recipes").glob("*.yaml"))


def _expected_text(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", "replace")  # some cases hold bytes that are not UTF-8 on purpose
    first = text.splitlines()[0] if text else ""
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <text>'"
    return first.removeprefix("# expect: ")


def test_shipped_recipes_exist():
    assert shipped_recipes(), "no shipped recipes found"


@pytest.mark.parametrize("recipe", shipped_recipes(), ids=lambda r: r.name)
def test_every_shipped_recipe_validates(recipe):
    loaded = load_recipe(recipe.path)
    assert loaded.name == recipe.name, "a shipped recipe's name must match its file name"
    assert recipe.description, "shipped recipes need a one-line description for `ppo-align recipes`"


def test_broken_corpus_is_large_enough():
    assert len(BROKEN) >= 35
    assert readme_count(r"(\d+) broken recipes in `tests/broken_recipes/`") == len(BROKEN)


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_recipe_fails_naming_the_key(path, run_cli):
    code, _, err = run_cli("validate", path)
    assert code == 2
    assert _expected_text(path) in err
    assert "Traceback" not in err
    # One short line per problem, each with its fix (a suggestion counts), however large the bad value.
    for line in err.strip().splitlines():
        assert line.startswith("error: ") and ("fix:" in line or "did you mean" in line), line
        assert len(line) < 500, line[:200]


def test_all_schema_errors_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "name": "x",
        "ppo": {"learning_rate": "fast", "num_ppo_epochs": 0, "kl_estimatr": "k3"},
        "model": {"quantization": {"quant_type": "int8"}},
    }))
    with pytest.raises(UserError) as info:
        load_recipe(bad)
    text = str(info.value)
    for key in ("ppo.learning_rate", "ppo.num_ppo_epochs", "ppo.kl_estimatr", "model.quantization.quant_type",
                "reward", "data"):
        assert key in text
    assert "did you mean 'kl_estimator'" in text
    assert len(info.value.problems) == 6


def test_cross_field_errors_reported_together():
    with pytest.raises(UserError) as info:
        load_recipe("smollm2-refusal-boundary", ["ppo.num_mini_batches=3", "ppo.samples_per_prompt=5",
                                                 "ppo.total_episodes=1"])
    assert len(info.value.problems) == 3


def test_overrides_from_python_list_and_dict():
    a = load_recipe(REPO / "recipes" / "smollm2-refusal-boundary.yaml", ["ppo.learning_rate=1e-6", "model.lora.r=4"])
    b = load_recipe(REPO / "recipes" / "smollm2-refusal-boundary.yaml", {"ppo.learning_rate": 1e-6, "model.lora.r": 4})
    assert a.ppo.learning_rate == b.ppo.learning_rate == 1e-6
    assert a.model.lora.r == b.model.lora.r == 4


def test_override_with_unknown_key_is_suggested():
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        load_recipe("smollm2-refusal-boundary", ["ppo.learnng_rate=1e-5"])


def test_override_without_equals_sign():
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_recipe("smollm2-refusal-boundary", ["ppo.learning_rate"])


def test_relative_paths_resolve_against_recipe_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the repo
    recipe = load_recipe(REPO / "recipes" / "smollm2-refusal-boundary.yaml")
    assert recipe.resolve_path(recipe.data.prompts).is_file()


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe("smollm2-refusal-boundary")
    again = Recipe.model_validate(yaml.safe_load(recipe.to_yaml()))
    assert again.model_dump() == recipe.model_dump()


def test_dict_source_and_function_from_file(tmp_path):
    (tmp_path / "myreward.py").write_text("def score(prompts, responses, metadata):\n    return [0.0] * len(responses)\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    recipe = load_recipe({
        "name": "from-dict",
        "reward": {"source": "function", "function": str(tmp_path / "myreward.py") + ":score"},
        "data": {"prompts": str(tmp_path / "p.jsonl")},
    })
    assert recipe.reward.function.endswith(":score")


def test_local_model_dir_metadata_is_checked(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"max_position_embeddings": 64}')
    (model_dir / "tokenizer_config.json").write_text('{"eos_token": "</s>", "pad_token": "</s>", "chat_template": "{{ messages }}"}')
    with pytest.raises(UserError) as info:
        load_recipe("smollm2-refusal-boundary", {"model.source": str(model_dir)})
    text = str(info.value)
    assert "model's context of 64" in text and "model.pad_token = '</s>'" in text
    # Naming a distinct pad token fixes the second problem.
    with pytest.raises(UserError) as info:
        load_recipe("smollm2-refusal-boundary", {"model.source": str(model_dir), "model.pad_token": "<pad>"})
    assert len(info.value.problems) == 1
    # A base model without a chat template: one more problem, found from the tokenizer config alone.
    (model_dir / "tokenizer_config.json").write_text('{"eos_token": "</s>", "pad_token": "<pad>"}')
    with pytest.raises(UserError, match="no chat template"):
        load_recipe("smollm2-refusal-boundary", {"model.source": str(model_dir)})
