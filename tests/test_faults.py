"""Faults on real processes: SIGKILL at random moments, Ctrl-C and SIGTERM, a killed eval.

Each case runs `ppo-align` as a separate process on the tiny model and checks what a user
would: the run finishes with the right steps and the same numbers as an uninterrupted run,
no more than one save interval is lost, and nothing incomplete is ever evaluated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ppo_align import evaluate, load_recipe
from ppo_align.checkpoints import find_checkpoints, latest_complete
from ppo_align.evaluation.targets import job_for_run
from ppo_align.files import read_jsonl
from ppo_align.training.run import train

pytestmark = pytest.mark.slow

UPDATES, SAVE_STEPS = 8, 2


@pytest.fixture
def recipe_file(tiny_recipe, tmp_path) -> Path:
    tiny_recipe["ppo"].update(total_episodes=4 * UPDATES, save_steps=SAVE_STEPS)
    tiny_recipe["eval"] = {"sets": ["boundary", "refusal"], "limit": 16, "max_new_tokens": 6, "batch_size": 4}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    return path


def _start(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ppo_align.cli", *args], stdout=out, stderr=out, env=env)


def _wait_until(proc: subprocess.Popen, condition, poll: float = 0.01, timeout: float = 300) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError("the process neither reached the condition nor ended")


def _steps_logged(run_dir: Path) -> int:
    return len(read_jsonl(run_dir / "metrics.jsonl"))


def _assert_only_complete_checkpoints_are_visible(run_dir: Path) -> None:
    assert all(c.complete for c in find_checkpoints(run_dir)), "a checkpoint-N directory without COMPLETE"
    targets = [t.name for t in job_for_run(run_dir).targets]
    assert targets == ["reference", *(c.path.name for c in find_checkpoints(run_dir))]


def test_sigkill_at_random_moments_loses_at_most_one_save_interval(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    straight = train(load_recipe(recipe_file, overrides=["output.name=straight"]), progress=False)
    expected = read_jsonl(straight.dir / "metrics.jsonl")
    run_dir, log = recipe.run_dir, tmp_path / "train.log"
    rng = random.Random(20261202)
    kills, hit_a_save = 0, False
    for attempt in range(5):
        proc = _start("train", str(recipe_file), log=log)
        done = _steps_logged(run_dir) if run_dir.exists() else 0
        if attempt == 1:  # the moment a checkpoint is being written
            reached = _wait_until(proc, lambda: any(run_dir.glob(".tmp-checkpoint-*")), poll=0.0005)
        else:
            target = rng.randint(done + 1, UPDATES - 1) if done + 1 < UPDATES else UPDATES
            reached = _wait_until(proc, lambda: _steps_logged(run_dir) >= target)
            time.sleep(rng.uniform(0, 0.5))  # somewhere inside the next update (or its save)
        if not reached or proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        hit_a_save |= any(run_dir.glob(".tmp-checkpoint-*"))
        logged = _steps_logged(run_dir)
        latest = latest_complete(run_dir)
        assert logged - (latest.step if latest else 0) <= SAVE_STEPS, (logged, latest)
        _assert_only_complete_checkpoints_are_visible(run_dir)
    assert kills >= 4, log.read_text()[-2000:]
    assert hit_a_save, "no kill landed inside a checkpoint write"

    proc = _start("train", str(recipe_file), log=log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    assert not list(run_dir.glob(".tmp-checkpoint-*")), "the next save clears an interrupted one"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, UPDATES + 1))
    for a, b in zip(expected, metrics):  # resumed runs continue the same numbers
        for key in ("reward_mean", "kl", "policy_loss", "value_loss", "lr", "episode"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert latest_complete(run_dir).step == UPDATES


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_ctrl_c_and_sigterm_save_the_update_in_progress(recipe_file, tmp_path, algorithm):
    if algorithm != "ppo":  # the same recipe on TRL's GRPO trainer (a Trainer subclass, unlike TRL's PPO)
        recipe = yaml.safe_load(recipe_file.read_text())
        recipe["ppo"].pop("local_rollout_forward_batch_size")
        recipe_file.write_text(yaml.safe_dump({**recipe, "algorithm": algorithm}))
    run_dir, log = load_recipe(recipe_file).run_dir, tmp_path / "train.log"
    for sig, at in ((signal.SIGINT, 1), (signal.SIGTERM, 4)):
        proc = _start("train", str(recipe_file), log=log)
        assert _wait_until(proc, lambda: _steps_logged(run_dir) >= at)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig, log.read_text()[-2000:]
        saved = latest_complete(run_dir)
        # The update running when the signal came finished and was saved, on or off the save schedule.
        assert saved.step == _steps_logged(run_dir) >= at
        assert (f"interrupted after {algorithm.upper()} update {saved.step} of {UPDATES}, saved as "
                f"checkpoint-{saved.step}") in log.read_text()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
        assert "Traceback" not in log.read_text()
    proc = _start("train", str(recipe_file), log=log)
    assert proc.wait(timeout=300) == 0
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, UPDATES + 1))


def test_sigkill_during_eval_keeps_results_and_the_finished_cache(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    train(recipe, progress=False)
    evaluate(recipe.run_dir, progress=False)
    results = recipe.run_dir / "eval" / "results.json"
    before = results.read_bytes()
    train(load_recipe(recipe_file, overrides=[f"ppo.total_episodes={4 * (UPDATES + SAVE_STEPS)}"]), progress=False)

    cache = recipe.run_dir / "eval" / "cache"
    cached = set(cache.glob("*.json"))
    proc = _start("eval", str(recipe.run_dir), log=tmp_path / "eval.log")
    assert _wait_until(proc, lambda: set(cache.glob("*.json")) - cached, poll=0.0005), (tmp_path / "eval.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert results.read_bytes() == before, "a killed eval changed the previous results.json"
    assert len(set(cache.glob("*.json")) - cached) == 1  # one of the new checkpoint's two sets finished

    rerun = evaluate(recipe.run_dir, progress=False)
    assert [(c["target"], c["set"]) for c in rerun.data["computed"]] == [(f"checkpoint-{UPDATES + SAVE_STEPS}", "refusal")]
    assert f"checkpoint-{UPDATES + SAVE_STEPS}" in [t["name"] for t in rerun.data["targets"]]
