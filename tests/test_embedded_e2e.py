"""End to end on the real embedded model (slow tier: `make test` runs it, plain `pytest` skips it)."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_default_recipe_trains_checkpoints_and_resumes(run_cli, tmp_path, caplog):
    recipe = REPO / "recipes" / "smollm2-refusal-boundary.yaml"
    args = ["train", recipe, "--set", f"output.dir={tmp_path}", "--set", "ppo.response_length=12",
            "--set", "ppo.save_steps=1", "--set", "warm_start.epochs=0.1", "--set", "monitor.holdout=8",
            "--set", "monitor.min_refusal={}"]
    caplog.set_level(logging.WARNING)
    code, out, err = run_cli(*args, "--set", "ppo.total_episodes=32")
    assert code == 0, err
    run = tmp_path / "smollm2-refusal-boundary"
    assert (run / "checkpoint-1" / "COMPLETE").is_file()
    assert "unchanged" not in caplog.text, "the policy did not learn (bitsandbytes CPU trap?)"
    assert (run / "warm-start" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((run / "reward-audit.json").read_text())["rows"]
    assert [json.loads(line)["step"] for line in (run / "monitor.jsonl").read_text().splitlines()] == [0, 1]
    warm = (run / "warm-start" / "stage.json").read_bytes()

    # Ask for one more update: the run resumes from checkpoint-1 instead of starting over.
    code, out, err = run_cli(*args, "--set", "ppo.total_episodes=64")
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["resumed_from"] == "checkpoint-1"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run / "checkpoint-2" / "COMPLETE").is_file()
    assert (run / "warm-start" / "stage.json").read_bytes() == warm  # the warm start was reused, not retrained

    # The eval harness on the real run: reference + both checkpoints, a small even spread of prompts.
    code, out, err = run_cli("eval", run, "--limit", "12", "--max-new-tokens", "8")
    assert code == 0, err
    results = json.loads((run / "eval" / "results.json").read_text())
    assert [t["name"] for t in results["targets"]] == ["reference", "checkpoint-1", "checkpoint-2"]
    assert set(results["evalsets"]) == {"boundary", "minimal_pairs", "refusal", "knowledge"}
    assert results["evalsets"]["boundary"]["n"] == results["evalsets"]["minimal_pairs"]["n"] == 12
    assert "reference → checkpoint-2" in out

    # Adapter swapping is exact on the real 4-bit model: checkpoint-2's answers in results.json equal those
    # of a freshly loaded base with only its adapter. (Adapters loaded after bitsandbytes' first CPU
    # forward once produced garbage here.)
    from peft import PeftModel

    from ppo_align import inference, load_recipe, models
    from ppo_align.chat import encode_chat
    from ppo_align.evalsets import load_evalset

    section = load_recipe(run / "recipe.yaml", check_resources=False).model
    model_dir = models.resolve_model_dir(section.source)
    tokenizer = models.load_tokenizer(section, model_dir, for_training=False)
    fresh = PeftModel.from_pretrained(models.load_for_inference(section, model_dir, tokenizer),
                                      str(run / "checkpoint-2" / "policy")).eval()
    # Same prompts in the same batches as the harness: a different batch shape changes padding, and with it
    # the last float bits, which can flip a near-tie greedy token; that is not what this checks.
    system = [{"role": "system", "content": results["system_prompt"]}] if results["system_prompt"] else []
    records = results["records"]["checkpoint-2"]["boundary"]
    items = {item.id: item for item in load_evalset("boundary").items}
    prompts = [encode_chat(tokenizer, system + [{"role": "user", "content": items[r["id"]].prompt}]) for r in records]
    generated = inference.generate(fresh, tokenizer, prompts, inference.GenerationSettings(**results["generation"]))
    assert [g.text for g in generated] == [r["response"] for r in records]

    # The last step of the main command: the report.
    code, out, err = run_cli("report", run)
    assert code == 0, err
    assert (run / "report" / "report.html").is_file()
    # The knowledge claim's verdict follows its rule on this run's numbers (interval inside ±5 points), not
    # merely its name appearing.
    change = next(row for row in results["shifts"] if (row["target"], row["set"], row["category"])
                  == ("checkpoint-2", "knowledge", "all"))["exact_match"]
    verdict = "PASS" if -0.05 <= change["low"] and change["high"] <= 0.05 else "FAIL"
    row = next(line for line in (run / "report" / "report.md").read_text().splitlines()
               if line.startswith("| knowledge unchanged |"))
    assert row.split("|")[2].strip() == verdict, row


def test_knowledge_control_is_answerable_by_the_embedded_model():
    """A control set the model scores 0% on controls nothing: greedy accuracy must be clearly above zero.

    Prints the accuracy; evalsets/DATASHEET.md reports it.
    """
    from ppo_align import inference, models
    from ppo_align.chat import encode_chat
    from ppo_align.evalsets import load_evalset
    from ppo_align.evaluation.harness import answer_matches
    from ppo_align.recipe.schema import ModelSection

    section = ModelSection(source="embedded:smollm2-135m-instruct", quantization={"load_in_4bit": False})
    model_dir = models.resolve_model_dir(section.source)
    tokenizer = models.load_tokenizer(section, model_dir, for_training=False)
    model = models.load_for_inference(section, model_dir, tokenizer)
    items = load_evalset("knowledge").items
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": i.prompt}]) for i in items]
    generated = inference.generate(model, tokenizer, prompts, inference.GenerationSettings(max_new_tokens=24, batch_size=64))
    correct = sum(answer_matches(g.text, item.answers) for g, item in zip(generated, items))
    accuracy = correct / len(items)
    print(f"knowledge greedy accuracy of the embedded model: {correct}/{len(items)} = {accuracy:.1%}")
    assert accuracy >= 0.25
