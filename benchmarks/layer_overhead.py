"""Layer overhead: an update of ppo-align's PPO run vs a raw TRL PPOTrainer on identical objects and config.

Both sides get freshly loaded, identically seeded 4-bit LoRA policy and value models, the same
prompts, the same reward (the recipe's, in TRL's reward-model shape) and the same PPOConfig
(`ppo_align.ppo.build_config`). The raw side is TRL's trainer as its docs build it; ours adds
checkpoints, logs, guards and the resumable prompt order. The time of each update is taken by the
same callback on both sides; the first update is warm-up and excluded. Target: <= 5% overhead. Each
side's trainer state is checked to hold the same number of updates and episodes, and the overhead gets
a bootstrap 95% interval (update times resampled within each side).

    python benchmarks/layer_overhead.py [--updates 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import machine, write_result
from transformers import TrainerCallback

from ppo_align import load_recipe, models
from ppo_align.checkpoints import latest_complete


class UpdateTimer(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def update_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def build(recipe):
    from transformers import set_seed

    from ppo_align.rewards.sources import build_scorer
    from ppo_align.training.prompts import load_prompts

    model_dir = models.resolve_model_dir(recipe.model.source)
    tokenizer = models.load_tokenizer(recipe.model, model_dir)
    prompts = load_prompts(recipe, tokenizer)
    scorer = build_scorer(recipe, tokenizer, model_dir=model_dir, progress=False)
    set_seed(recipe.ppo.seed)
    policy = models.load_policy(recipe.model, model_dir, tokenizer)
    value = models.load_value_model(recipe.model, recipe.value.lora, model_dir, tokenizer)
    return tokenizer, prompts, scorer, policy, value


def work_done(trainer) -> dict:
    """What a side's trainer did: updates, episodes, and responses that ended before the length budget."""
    eos = [h["val/num_eos_tokens"] for h in trainer.state.log_history if "val/num_eos_tokens" in h]
    return {"updates": trainer.state.global_step, "episodes": trainer.state.episode, "eos_per_update": eos}


def bootstrap_overhead(ours: list[float], raw: list[float], resamples: int = 4000, seed: int = 0) -> list[float]:
    """95% interval of median(ours) / median(raw) - 1, resampling each side's update times."""
    import random

    rng = random.Random(seed)
    draws = sorted(statistics.median(rng.choices(ours, k=len(ours))) / statistics.median(rng.choices(raw, k=len(raw))) - 1
                   for _ in range(resamples))
    return [draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]]


def run_ours(recipe, out: Path) -> tuple[list[float], float, dict]:
    from ppo_align.training.ppo import PPORun

    tokenizer, prompts, scorer, policy, value = build(recipe)
    run = PPORun(recipe, out, tokenizer, policy, value, scorer, prompts)
    timer = UpdateTimer()
    run.trainer.add_callback(timer)
    start = time.perf_counter()
    run.train()
    assert latest_complete(out).step == recipe.ppo.total_episodes // recipe.rollout_batch_size
    return timer.update_seconds(), time.perf_counter() - start, work_done(run.trainer)


def run_raw_trl(recipe, out: Path) -> tuple[list[float], float, dict]:
    from ppo_align.training.ppo import PPOTrainer, TRLRewardModule, build_config

    tokenizer, prompts, scorer, policy, value = build(recipe)
    timer = UpdateTimer()
    trainer = PPOTrainer(args=build_config(recipe, out), processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=TRLRewardModule(scorer, prompts, tokenizer), value_model=value,
                         train_dataset=prompts.dataset(), callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    return timer.update_seconds(), time.perf_counter() - start, work_done(trainer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="smollm2-refusal-boundary")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="rollout batch (episodes per update)")
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/layer_overhead.json")
    args = parser.parse_args()

    # The recipe's PPO stage alone: no warm start, audit or monitor (stages around PPO, not per-update cost).
    recipe = load_recipe(args.recipe, [
        "warm_start=null", "monitor.holdout=0", "monitor.min_refusal={}", "audit.enabled=false",
        f"ppo.per_device_train_batch_size={args.batch}", "ppo.gradient_accumulation_steps=1", "ppo.num_mini_batches=1",
        f"ppo.local_rollout_forward_batch_size={args.batch}", f"ppo.response_length={args.response_length}",
        f"ppo.total_episodes={args.updates * args.batch}", f"ppo.save_steps={args.updates}",
    ])
    scratch = Path(tempfile.mkdtemp(prefix="ppo-align-bench-"))
    ours, raw, ours_total, raw_total, work = [], [], [], [], {"ours": [], "raw": []}
    for r in range(args.repeats):  # alternate the order so drift in machine load hits both sides
        sides = [("ours", run_ours), ("raw", run_raw_trl)] if r % 2 == 0 else [("raw", run_raw_trl), ("ours", run_ours)]
        for name, fn in sides:
            updates, total, done = fn(recipe, scratch / f"{name}-{r}")
            work[name].append(done)
            (ours if name == "ours" else raw).extend(updates[1:])  # first update: warm-up
            (ours_total if name == "ours" else raw_total).append(total)
            print(f"{name} repeat {r}: updates {', '.join(f'{u:.2f}' for u in updates)} s; total {total:.1f} s")

    same_work = all((w["updates"], w["episodes"]) == (work["ours"][0]["updates"], work["ours"][0]["episodes"])
                    for w in work["ours"] + work["raw"])
    if not same_work:
        raise SystemExit(f"the two sides did different work: {work}")
    ours_s, raw_s = statistics.median(ours), statistics.median(raw)
    interval = bootstrap_overhead(ours, raw)
    result = {
        "benchmark": "layer_overhead", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "recipe": args.recipe, "updates": args.updates, "rollout_batch": args.batch,
        "response_length": args.response_length, "repeats": args.repeats,
        "ours_update_s": ours, "raw_trl_update_s": raw, "ours_total_s": ours_total, "raw_trl_total_s": raw_total,
        "overhead": ours_s / raw_s - 1, "overhead_95_interval": interval, "target_overhead": 0.05,
        "work": work,
        "note": "ours includes one checkpoint save (the last update) and metrics/samples logging; totals include them",
    }
    write_result(args.output, result)
    print(f"median update: ppo-align {ours_s:.2f} s, raw TRL {raw_s:.2f} s: overhead {100 * result['overhead']:+.1f}% "
          f"[{100 * interval[0]:+.1f}%, {100 * interval[1]:+.1f}%] "
          f"(target <= 5%: {'met' if result['overhead'] <= 0.05 else 'MISSED'}; the interval's upper end "
          f"{'is' if interval[1] <= 0.05 else 'is not'} inside it)")


if __name__ == "__main__":
    main()
