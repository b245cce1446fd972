"""Rollout generation with each distinct prompt encoded once vs every row encoded: the default recipe's shape.

PPO's rollout batch holds every prompt `ppo.samples_per_prompt` times in a row, and generate's first pass encodes
every row. `inference.distinct_prompt_pass` encodes each distinct prompt once and copies its cache to the repeats.
Both sides here generate the same rollout batches (training prompts, in the run's grouped order) with TRL's own
batch generation on the recipe's 4-bit LoRA policy (no warm start: the per-batch cost only), the same seed per
batch, sides alternated; the first batch is warm-up. The result records the median generation time of each side,
their ratio, and whether sequences and the logits TRL reads are identical (they must be: the change is exact).

    python benchmarks/prompt_pass.py [--batches 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from bench_common import machine, write_result
from transformers import GenerationConfig

from ppo_align import inference, load_recipe, models
from ppo_align.chat import left_pad
from ppo_align.training import ppo
from ppo_align.training.prompts import load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/smollm2-refusal-boundary.yaml")
    parser.add_argument("--batches", type=int, default=7, help="rollout batches per side (the first is warm-up)")
    parser.add_argument("--output", default="benchmarks/results/prompt_pass.json")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, ["warm_start=null"])
    p = recipe.ppo
    model_dir = models.resolve_model_dir(recipe.model.source)
    tokenizer = models.load_tokenizer(recipe.model, model_dir)
    prompts = load_prompts(recipe, tokenizer)
    policy = models.load_policy(recipe.model, model_dir, tokenizer).train()  # as TRL's rollout runs it
    config = GenerationConfig(max_new_tokens=p.response_length, temperature=p.temperature + 1e-7, top_k=0,
                              top_p=1.0, do_sample=True)  # TRL's PPO sampling settings
    per_batch = recipe.rollout_batch_size // p.samples_per_prompt
    times: dict[str, list[float]] = {"once": [], "every_row": []}
    identical = True
    for b in range(args.batches):
        rows = [prompts.input_ids[i] for i in range(b * per_batch, (b + 1) * per_batch) for _ in range(p.samples_per_prompt)]
        queries, _ = left_pad(rows, tokenizer.pad_token_id)
        out = {}
        for side in (["once", "every_row"] if b % 2 == 0 else ["every_row", "once"]):
            torch.manual_seed(p.seed + b)
            start = time.perf_counter()
            with inference.distinct_prompt_pass(policy) if side == "once" else nullcontext():
                out[side] = ppo._trl_batch_generation(policy, queries, len(rows), tokenizer.pad_token_id, config)
            if b:
                times[side].append(time.perf_counter() - start)
        identical &= all(torch.equal(x, y) for x, y in zip(out["once"], out["every_row"]))
        print(f"batch {b}: " + ", ".join(f"{side} {t[-1]:.2f} s" for side, t in times.items() if b), flush=True)

    once_s, every_s = statistics.median(times["once"]), statistics.median(times["every_row"])
    result = {
        "benchmark": "prompt_pass", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "recipe": args.recipe,
        "rollout_batch": recipe.rollout_batch_size, "samples_per_prompt": p.samples_per_prompt,
        "response_length": p.response_length, "batches": args.batches - 1,
        "once_generation_s": times["once"], "every_row_generation_s": times["every_row"],
        "speedup": every_s / once_s, "identical_generation": identical,
    }
    write_result(args.output, result)
    print(f"median rollout generation: {once_s:.2f} s encoding each prompt once, {every_s:.2f} s encoding every row: "
          f"{result['speedup']:.2f}x; generation {'identical' if identical else 'DIFFERS'}")
    if not identical:
        raise SystemExit("encoding each prompt once changed the generation")


if __name__ == "__main__":
    main()
