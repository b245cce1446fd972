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
            "--set", "ppo.save_steps=1"]
    caplog.set_level(logging.WARNING)
    code, out, err = run_cli(*args, "--set", "ppo.total_episodes=16")
    assert code == 0, err
    run = tmp_path / "smollm2-refusal-boundary"
    assert (run / "checkpoint-1" / "COMPLETE").is_file()
    assert "unchanged" not in caplog.text, "the policy did not learn (bitsandbytes CPU trap?)"

    # Ask for one more update: the run resumes from checkpoint-1 instead of starting over.
    code, out, err = run_cli(*args, "--set", "ppo.total_episodes=32")
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["resumed_from"] == "checkpoint-1"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run / "checkpoint-2" / "COMPLETE").is_file()


def test_knowledge_control_is_answerable_by_the_embedded_model():
    """A control set the model scores 0% on controls nothing: greedy accuracy must be clearly above zero.

    Prints the accuracy; evalsets/DATASHEET.md reports it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ppo_align.embedded import ensure_embedded_model
    from ppo_align.evalsets import load_evalset
    from ppo_align.judges import answer_matches
    from ppo_align.prompts import encode_chat

    path = ensure_embedded_model("embedded:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    items = load_evalset("knowledge").items
    correct = 0
    for start in range(0, len(items), 32):
        batch = items[start:start + 32]
        ids = [encode_chat(tokenizer, [{"role": "user", "content": i.prompt}]) for i in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(x) for x in ids])[:, None]).long()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
        for item, row in zip(batch, out[:, width:]):
            correct += answer_matches(tokenizer.decode(row, skip_special_tokens=True), item.answers)
    accuracy = correct / len(items)
    print(f"knowledge greedy accuracy of the embedded model: {correct}/{len(items)} = {accuracy:.1%}")
    assert accuracy >= 0.25
