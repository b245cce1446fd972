"""Eval throughput: the harness's batched, length-bucketed generation vs a naive per-prompt loop and vs
plain batched `generate` calls (the prompts in their own order, `--batch-size` at a time, left-padded).

All sides run greedy decoding with the same loaded model on the same prompts
and the same number of new tokens; the script counts the outputs that agree and
reports prompts per second of each side and their ratios (absolute times on a
shared machine are noise; the ratio measured in one run is not). The harness
side also keeps each token's log-probability for the eval's KL; the others do not.

    python benchmarks/eval_throughput.py [--prompts 48] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_common import machine, write_result

from ppo_align import inference, models
from ppo_align.chat import encode_chat
from ppo_align.evalsets import load_evalset
from ppo_align.recipe.schema import ModelSection


def sample_prompts(n: int) -> list[str]:
    """An even spread over the behaviour and knowledge sets (every k-th prompt, deterministic)."""
    items = [i for name in ("boundary", "refusal", "knowledge") for i in load_evalset(name).items]
    step = max(len(items) // n, 1)
    return [item.prompt for item in items[::step][:n]]


def naive(model, tokenizer, prompts, max_new_tokens):
    import torch

    out = []
    for ids in prompts:
        with torch.inference_mode():
            tokens = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id)
        out.append(inference._cut(tokens[0, len(ids):].tolist(), {tokenizer.eos_token_id, tokenizer.pad_token_id}))
    return out


def plain_batched(model, tokenizer, prompts, max_new_tokens, batch_size):
    import torch

    from ppo_align.chat import left_pad

    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start:start + batch_size], tokenizer.pad_token_id)
        with torch.inference_mode():
            tokens = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        out += [inference._cut(row[ids.shape[1]:].tolist(), stop) for row in tokens]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-precision", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/eval_throughput.json")
    args = parser.parse_args()

    section = ModelSection(source=args.model, quantization={"load_in_4bit": not args.full_precision})
    model_dir = models.resolve_model_dir(section.source)
    tokenizer = models.load_tokenizer(section, model_dir, for_training=False)
    model = models.load_for_inference(section, model_dir, tokenizer)
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in sample_prompts(args.prompts)]
    settings = inference.GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    inference.generate(model, tokenizer, prompts[: args.batch_size], settings)  # warm-up, excluded from both sides
    naive(model, tokenizer, prompts[:2], args.max_new_tokens)
    harness_times, naive_times, plain_times = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        batched = inference.generate(model, tokenizer, prompts, settings)
        harness_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        plain = plain_batched(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        looped = naive(model, tokenizer, prompts, args.max_new_tokens)
        naive_times.append(time.perf_counter() - start)
    same = sum(b.response_ids == n for b, n in zip(batched, looped))
    same_plain = sum(p == n for p, n in zip(plain, looped))
    harness_s, naive_s = statistics.median(harness_times), statistics.median(naive_times)
    plain_s = statistics.median(plain_times)
    result = {
        "benchmark": "eval_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": args.model, "load_in_4bit": not args.full_precision, "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "repeats": args.repeats,
        "harness_s": harness_times, "naive_s": naive_times, "plain_batched_s": plain_times,
        "harness_prompts_per_s": len(prompts) / harness_s, "naive_prompts_per_s": len(prompts) / naive_s,
        "plain_batched_prompts_per_s": len(prompts) / plain_s,
        "ratio": naive_s / harness_s, "ratio_vs_plain_batched": plain_s / harness_s,
        "identical_outputs": same, "plain_batched_identical_to_naive": same_plain,
        "tokens_generated": {"harness": sum(len(b.response_ids) for b in batched), "naive": sum(len(n) for n in looped),
                             "plain_batched": sum(len(p) for p in plain)},
    }
    write_result(args.output, result)
    print(f"harness {result['harness_prompts_per_s']:.2f} prompts/s, naive loop {result['naive_prompts_per_s']:.2f} prompts/s: "
          f"{result['ratio']:.1f}x (target >= 8x); identical greedy outputs {same}/{len(prompts)}")
    print(f"plain batched generate {result['plain_batched_prompts_per_s']:.2f} prompts/s: harness "
          f"{result['ratio_vs_plain_batched']:.2f}x; its outputs identical to the loop's {same_plain}/{len(prompts)}")


if __name__ == "__main__":
    main()
