"""Frozen lower layers run once per rollout batch: PPO updates with vs without that reuse, for one model.

In the default recipe 26 of 30 layers hold no trainable weight in the value model (`value.lora.last_layers: 4`)
and in the policy (`ppo.train_last_layers: 4`), and TRL's training passes would recompute what a no-grad pass of
the rollout already computed over the same sequences (the value pass; for the policy, the reference pass).
`FrozenLowerLayers` keeps that pass's output of those layers for the training passes. `--part shared`: a value
model whose frozen layers compute what the reference's do (`value.trunk: reference`; without a warm start the
reference is the base, so any value model here) also reads the reference pass's states, in its own rollout pass
too. Both sides here get freshly loaded, identically seeded models, the default recipe's PPO shape (no warm start,
monitor or audit: per-update cost only) and the same seed; the side without reuse has it switched off for
`--part` only (`value` and `policy` leave sharing off on both sides). The result records the median update time
of each side (first update excluded as warm-up), their ratio, and whether every logged training number is
identical on both sides (it must be: the reuse is exact).

    python benchmarks/frozen_layers.py --part value|policy|shared [--updates 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import machine, write_result
from layer_overhead import UpdateTimer, build

from ppo_align import load_recipe
from ppo_align.training import ppo

TIMING_KEYS = ("eps", "time", "runtime", "per_second")


PARTS = {"value": "for_value_model", "policy": "for_policy", "shared": "read_from"}
"""Each part's switch: the `FrozenLowerLayers` attribute that turns its reuse on."""
OFF = {"for_value_model": classmethod(lambda cls, *args: None), "for_policy": classmethod(lambda cls, *args: None),
       "read_from": lambda self, source: None}


def run_side(recipe, out: Path, part: str, reuse: bool) -> tuple[list[float], list[dict], int]:
    switched = [] if reuse else [PARTS[part]]
    if part != "shared":
        switched.append("read_from")
    saved = {name: ppo.FrozenLowerLayers.__dict__[name] for name in switched}
    for name in switched:
        setattr(ppo.FrozenLowerLayers, name, OFF[name])
    try:  # the value model's reuse is set up with the run, the policy's (and sharing) when it starts training
        tokenizer, prompts, scorer, policy, value = build(recipe)
        run = ppo.PPORun(recipe, out, tokenizer, policy, value, scorer, prompts)
        timer = UpdateTimer()
        run.trainer.add_callback(timer)
        run.train()
    finally:
        for name, original in saved.items():
            setattr(ppo.FrozenLowerLayers, name, original)
    logged = [{k: v for k, v in entry.items() if not any(t in k for t in TIMING_KEYS)}
              for entry in run.trainer.state.log_history]
    layers = run.policy_layers if part == "policy" else run.critic_layers
    reused = (layers.borrowed if part == "shared" else layers.replays) if layers else 0
    return timer.update_seconds(), logged, reused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), required=True, help="whose frozen layers to compare")
    parser.add_argument("--recipe", default="smollm2-refusal-boundary")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", help="default: benchmarks/results/frozen_layers-PART.json")
    args = parser.parse_args()

    base = load_recipe(args.recipe)
    recipe = load_recipe(args.recipe, [
        "warm_start=null", "monitor.holdout=0", "monitor.min_refusal={}", "audit.enabled=false",
        f"ppo.total_episodes={args.updates * base.rollout_batch_size}", f"ppo.save_steps={args.updates}",
    ])
    value_lora = recipe.value.lora or recipe.model.lora
    last_layers = value_lora.last_layers if args.part == "value" else recipe.ppo.train_last_layers
    if not last_layers or (args.part == "shared" and value_lora.last_layers != last_layers):
        raise SystemExit(f"{args.recipe}: nothing frozen to reuse for --part {args.part} (shared: the value model and "
                         f"the policy must train the same top layers)")
    scratch = Path(tempfile.mkdtemp(prefix="ppo-align-bench-"))
    times = {"reuse": [], "recompute": []}
    logs, replays = {}, {}
    for r in range(args.repeats):  # alternate the order so drift in machine load hits both sides
        sides = ["reuse", "recompute"] if r % 2 == 0 else ["recompute", "reuse"]
        for side in sides:
            updates, logged, replays[side] = run_side(recipe, scratch / f"{side}-{r}", args.part, reuse=side == "reuse")
            times[side].extend(updates[1:])
            logs.setdefault(side, logged)
            print(f"{side} repeat {r}: updates {', '.join(f'{u:.2f}' for u in updates)} s", flush=True)

    identical = logs["reuse"] == logs["recompute"]
    reuse_s, recompute_s = statistics.median(times["reuse"]), statistics.median(times["recompute"])
    result = {
        "benchmark": "frozen_layers", "part": args.part, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "recipe": args.recipe, "trained_layers": last_layers, "updates": args.updates,
        "rollout_batch": recipe.rollout_batch_size, "repeats": args.repeats,
        "reuse_update_s": times["reuse"], "recompute_update_s": times["recompute"],
        "speedup": recompute_s / reuse_s,
        ("value_rollout_passes_shared" if args.part == "shared" else "training_passes_reused"): replays["reuse"],
        "identical_training_numbers": identical,
    }
    write_result(args.output or f"benchmarks/results/frozen_layers-{args.part}.json", result)
    print(f"median update: {reuse_s:.2f} s with the reuse (--part {args.part}), {recompute_s:.2f} s without: "
          f"{result['speedup']:.2f}x; logged training numbers {'identical' if identical else 'DIFFER'}")
    if not identical:
        raise SystemExit("the reuse changed the training numbers")


if __name__ == "__main__":
    main()
