"""glibc keeping freed blocks for reuse (`models.reuse_freed_memory`): eval generation with vs without.

Each side runs in a fresh process (the allocator's settings hold for a process's life), alternating sides:
the embedded model in 4-bit with a LoRA adapter, as eval loads a checkpoint, generates greedy 32-token answers to 64 boundary prompts
(batch 64) three times after a warm-up. The result records every timing, the ratio of the medians, and
whether both sides produced the same tokens and log-probabilities (they must: only where memory comes
from changes).

    python benchmarks/freed_memory.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench_common import machine, write_result

SIDE = r"""
import hashlib, json, sys, time
from ppo_align import inference, load_recipe, models
if sys.argv[1] == "reuse":
    models.reuse_freed_memory()
from ppo_align.chat import encode_chat
from ppo_align.evalsets import load_evalset
section = load_recipe("smollm2-refusal-boundary", check_resources=False).model
model_dir = models.resolve_model_dir(section.source)
tokenizer = models.load_tokenizer(section, model_dir, for_training=False)
model = models.load_for_inference(section, model_dir, tokenizer)
from peft import get_peft_model  # a fresh LoRA adapter (as eval's checkpoints have one; it adds small tensors per layer)
model = get_peft_model(model, models.lora_config(section.lora, "CAUSAL_LM", model)).eval()
prompts = [encode_chat(tokenizer, [{"role": "user", "content": item.prompt}]) for item in load_evalset("boundary").items[:64]]
settings = inference.GenerationSettings(max_new_tokens=32, batch_size=64)
inference.generate(model, tokenizer, prompts[:8], settings)
seconds = []
for _ in range(3):
    start = time.perf_counter()
    out = inference.generate(model, tokenizer, prompts, settings, score_responses=True)
    seconds.append(time.perf_counter() - start)
digest = hashlib.sha256(repr([(g.text, g.scored.logprob) for g in out]).encode()).hexdigest()
print(json.dumps({"seconds": seconds, "digest": digest}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/freed_memory.json")
    args = parser.parse_args()
    seconds, digests = {"reuse": [], "system": []}, set()
    for r in range(args.repeats):
        for side in (["system", "reuse"] if r % 2 == 0 else ["reuse", "system"]):
            done = subprocess.run([sys.executable, "-c", SIDE, side], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[side].extend(result["seconds"])
            digests.add(result["digest"])
            print(f"{side} repeat {r}: {', '.join(f'{s:.2f}' for s in result['seconds'])} s", flush=True)
    reuse, system = statistics.median(seconds["reuse"]), statistics.median(seconds["system"])
    result = {"benchmark": "freed_memory", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "prompts": 64, "max_new_tokens": 32, "reuse_s": seconds["reuse"], "system_s": seconds["system"],
              "speedup": system / reuse, "identical_outputs": len(digests) == 1}
    write_result(args.output, result)
    print(f"median generation: {reuse:.2f} s reusing freed memory, {system:.2f} s without: {result['speedup']:.2f}x; "
          f"outputs {'identical' if result['identical_outputs'] else 'DIFFER'}")
    if len(digests) != 1:
        raise SystemExit("the allocator setting changed the outputs")


if __name__ == "__main__":
    main()
