"""Data-parallel PPO in two CPU processes (gloo) through `ppo-align train --num-processes 2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from ppo_align.checkpoints import latest_complete
from ppo_align.files import read_jsonl

pytestmark = pytest.mark.slow


def _cli(*args, processes: int = 2):
    # One thread per process, as torchrun sets it, so that one process and two sum floats in the same order.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ppo_align.cli", *map(str, args), "--num-processes", str(processes)],
                          env=env, capture_output=True, text=True, timeout=900)


def _train(recipe_file, *args):
    return _cli("train", recipe_file, *args)


def test_two_processes_train_checkpoint_and_resume(tiny_recipe, tmp_path):
    # 4 responses per process per update, 8 in all: 32 episodes = 4 updates, checkpoints at 2 and 4.
    tiny_recipe["ppo"].update(total_episodes=32, save_steps=2)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe))
    run_dir = tmp_path / "runs" / "tiny"

    done = _train(recipe_file)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]  # one writer
    info = json.loads((run_dir / "run.json").read_text())
    assert info["processes"] == 2 and info["status"] == "finished"
    last = latest_complete(run_dir)
    assert last.step == 4
    assert last.progress()["episode"] == 32 and last.progress()["processes"] == 2
    # The processes stayed in sync: the same trainable weights in both at every checkpoint (only one writes them).
    for ckpt in (run_dir / "checkpoint-2", last.path):
        digests = json.loads((ckpt / "progress.json").read_text())["weights_per_process"]
        assert len(digests) == 2 and digests[0] == digests[1], digests
    state = {p.name for p in (last.path / "state").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "scheduler.json"} <= state
    assert (last.path / "policy" / "adapter_model.safetensors").is_file()

    done = _train(recipe_file, "--set", "ppo.total_episodes=48")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "run.json").read_text())["resumed_from"] == "checkpoint-4"
    assert latest_complete(run_dir).step == 6


def test_two_processes_share_an_eval_and_merge_what_one_would_compute(tiny_recipe, tmp_path):
    import shutil

    from ppo_align import load_recipe
    from ppo_align.training.run import train

    tiny_recipe["ppo"].update(save_steps=1)  # 2 updates: reference + 2 checkpoints
    tiny_recipe["eval"] = {"sets": ["boundary", "refusal"], "limit": 8, "max_new_tokens": 6, "batch_size": 4}
    run_dir = train(load_recipe(tiny_recipe), progress=False).dir
    shared = tmp_path / "shared"
    shutil.copytree(run_dir, shared)

    done = _cli("eval", run_dir, processes=1)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads((run_dir / "eval" / "results.json").read_text())
    done = _cli("eval", shared)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads((shared / "eval" / "results.json").read_text())
    assert merged["processes"] == 2
    assert len(merged["computed"]) == 6  # 3 targets x 2 sets, each computed once, by one of the processes
    for key in ("records", "metrics", "shifts", "flips"):
        assert merged[key] == alone[key], key
    assert [(t["name"], t["fingerprint"]) for t in merged["targets"]] == [(t["name"], t["fingerprint"]) for t in alone["targets"]]
    assert done.stdout.count("done:") == 1  # one process reports
