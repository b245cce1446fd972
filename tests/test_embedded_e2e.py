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
