"""Checkpoint sweep and incremental re-eval, through the real eval harness.

Sweep: N checkpoints (LoRA adapters) plus the reference evaluated by swapping adapters on one loaded
model (what `ppo-align eval` does) vs loading the model again for each checkpoint. Both sides run the
same harness code on the same prompts, so the only difference is the model loads; their per-prompt
answers are checked to be identical.

Incremental: after a full eval of the reference and N checkpoints, one more checkpoint appears; the
re-run evaluates only that one (everything else comes from the cache). Target: at most 1/N of the
full run + 10%.

    python benchmarks/checkpoint_sweep.py [--checkpoints 5] [--limit 24] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import machine, write_result

from ppo_align import evaluate, models
from ppo_align.recipe.schema import ModelSection


def make_checkpoints(model_dir: str, count: int, out: Path) -> list[Path]:
    """``count`` LoRA adapters shaped like a run's checkpoints, each a small random step away from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                               LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.02)  # near the base, as PPO checkpoints are
        path = out / f"checkpoint-{10 * (i + 1)}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


def answers(results) -> dict:
    return {target: {s: [r.get("response") for r in rows] for s, rows in sets.items()}
            for target, sets in results.data["records"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--evalset", default="boundary")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/checkpoint_sweep.json")
    args = parser.parse_args()

    model_dir = models.resolve_model_dir(ModelSection(source=args.model).source)
    work = Path(tempfile.mkdtemp(prefix="ppo-align-bench-"))
    paths = make_checkpoints(model_dir, args.checkpoints + 1, work)
    sweep, extra = paths[:-1], paths[-1]
    options = dict(sets=[args.evalset], limit=args.limit, max_new_tokens=args.max_new_tokens, progress=False)

    def timed(fn):
        start = time.perf_counter()
        value = fn()
        return time.perf_counter() - start, value

    evaluate(model=args.model, adapters=sweep[:1], output=work / "warm-up", **options)  # warm-up, excluded
    swap_s, reload_s, incremental_s, same = [], [], [], True
    for r in range(args.repeats):
        seconds, swapped = timed(lambda: evaluate(model=args.model, adapters=sweep, output=work / f"swap-{r}", **options))
        swap_s.append(seconds)

        def reload_each():
            # One eval call per checkpoint: each loads the model again; the reference is computed
            # once (the first call) and then comes from the shared cache, as in the swap run.
            result = None
            for path in sweep:
                result = evaluate(model=args.model, adapters=[path], output=work / f"reload-{r}", **options)
            return result

        seconds, _ = timed(reload_each)
        reload_s.append(seconds)
        reloaded = {}
        for path in sweep:  # the answers of each reload call (read back from the cache, no model load)
            reloaded.update(answers(evaluate(model=args.model, adapters=[path], output=work / f"reload-{r}", **options)))
        same &= reloaded == answers(swapped)

        seconds, rerun = timed(lambda: evaluate(model=args.model, adapters=[*sweep, extra], output=work / f"swap-{r}", **options))
        incremental_s.append(seconds)
        assert [c["target"] for c in rerun.data["computed"]] == [extra.name], rerun.data["computed"]

    swap, reload, incremental = map(statistics.median, (swap_s, reload_s, incremental_s))
    n = args.checkpoints
    result = {
        "benchmark": "checkpoint_sweep", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "model": args.model, "evalset": args.evalset, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
        "checkpoints": n, "repeats": args.repeats,
        "swap_s": swap_s, "reload_s": reload_s, "incremental_s": incremental_s,
        "sweep_ratio": reload / swap, "identical_answers": same,
        "incremental_fraction_of_full": incremental / swap,
        "incremental_target_fraction": 1 / n + 0.10,
    }
    write_result(args.output, result)
    print(f"sweep of {n} checkpoints + reference: adapter swap {swap:.1f}s, reload per checkpoint {reload:.1f}s: "
          f"{result['sweep_ratio']:.2f}x; identical answers: {same}")
    print(f"incremental re-eval after one new checkpoint: {incremental:.1f}s = {incremental / swap:.2f} of the full run "
          f"(target <= 1/{n} + 0.10 = {result['incremental_target_fraction']:.2f}: "
          f"{'met' if incremental / swap <= result['incremental_target_fraction'] else 'MISSED'})")
    print(json.dumps({k: result[k] for k in ("sweep_ratio", "incremental_fraction_of_full")}))


if __name__ == "__main__":
    main()
