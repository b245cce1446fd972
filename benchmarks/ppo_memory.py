"""PPO memory and checkpoint size: ppo-align's stage vs the same PPO built the ways a TRL user would build it.

ppo-align: one 4-bit base shared by the policy (LoRA) and its reference (the adapter disabled), a 4-bit
LoRA value model, the reward as a function. Three TRL builds beside it:
- trl-example: TRL's PPO example: a full-precision policy, a separate full-precision reference, value
  model and reward model (a sequence classifier);
- trl-lora: TRL's own LoRA mode: `peft_config` on a full-precision policy (the reference is the adapter
  disabled, as ours), a full-precision value model (TRL trains it whole), the recipe's reward function;
- trl-lora-4bit: the same with the policy's base loaded in 4-bit NF4.
Same PPOConfig
(`ppo_align.ppo.build_config` from the recipe), same prompts, same number of updates; each side runs
in its own process and reports its peak resident memory (ru_maxrss), its memory after imports and
after loading the models (where the rest goes), and the size of the checkpoint it writes (TRL's own
checkpoint: policy weights, optimizer, scheduler, RNG; it does not save the value model).

    python benchmarks/ppo_memory.py [--updates 2]                 # the default recipe's model
    python benchmarks/ppo_memory.py --random-init 1b --updates 1 --set ppo.per_device_train_batch_size=4 \
        --set ppo.gradient_accumulation_steps=2 --set ppo.num_mini_batches=1 --set ppo.local_rollout_forward_batch_size=8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import machine, write_result

GiB = 1024**3
SIDES = ("ppo-align", "trl-example", "trl-lora", "trl-lora-4bit")
# Llama shapes with the embedded model's tokenizer; weights are random (memory does not depend on them).
RANDOM_SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5),
}


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("nan")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def dir_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GiB


def random_model(shape: str, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ppo_align import models
    from ppo_align.recipe.schema import ModelSection

    source = models.resolve_model_dir(ModelSection().source)
    tokenizer = models.load_tokenizer(ModelSection(), source)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, **RANDOM_SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def side(name: str, model: str, updates: int, out: Path, overrides: list[str]) -> dict:
    """One side, in this process; returns its memory figures."""
    after_imports = rss_gib()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from transformers.trainer_utils import IntervalStrategy

    from ppo_align import load_recipe, models
    from ppo_align.rewards.sources import build_scorer
    from ppo_align.training.ppo import PPORun, PPOTrainer, build_config
    from ppo_align.training.prompts import load_prompts

    settings = [f"model.source={model}", "warm_start=null", "monitor.holdout=0", "monitor.min_refusal={}",
                "audit.enabled=false", f"ppo.save_steps={updates}", *overrides]
    batch = load_recipe("smollm2-refusal-boundary", settings, check_resources=False).rollout_batch_size
    recipe = load_recipe("smollm2-refusal-boundary", [*settings, f"ppo.total_episodes={updates * batch}"],
                         check_resources=False)
    model_dir = models.resolve_model_dir(recipe.model.source)
    tokenizer = models.load_tokenizer(recipe.model, model_dir)
    prompts = load_prompts(recipe, tokenizer)
    set_seed(recipe.ppo.seed)
    after_imports = max(after_imports, rss_gib())
    started = time.perf_counter()
    if name == "ppo-align":
        scorer = build_scorer(recipe, tokenizer, model_dir=model_dir, progress=False)
        policy = models.load_policy(recipe.model, model_dir, tokenizer)
        value = models.load_value_model(recipe.model, recipe.value.lora, model_dir, tokenizer)
        after_load = rss_gib()
        PPORun(recipe, out, tokenizer, policy, value, scorer, prompts).train()
        checkpoint = out / f"checkpoint-{updates}"
    elif name.startswith("trl-lora"):
        from transformers import BitsAndBytesConfig

        from ppo_align.training.ppo import TRLRewardModule

        quantized = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)} if name.endswith("4bit") else {}
        policy = AutoModelForCausalLM.from_pretrained(model_dir, **quantized)
        value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        value.config.pad_token_id = policy.config.pad_token_id = tokenizer.pad_token_id
        scorer = build_scorer(recipe, tokenizer, model_dir=model_dir, progress=False)
        after_load = rss_gib()
        args = build_config(recipe, out)
        args.bf16 = False
        args.save_strategy, args.save_steps = IntervalStrategy.STEPS, updates
        PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                   reward_model=TRLRewardModule(scorer, prompts, tokenizer), value_model=value,
                   peft_config=models.lora_config(recipe.model.lora, "CAUSAL_LM", policy),
                   train_dataset=prompts.dataset()).train()
        checkpoint = out / f"checkpoint-{updates}"
    else:
        def classifier():
            m = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
            m.config.pad_token_id = tokenizer.pad_token_id
            return m

        policy = AutoModelForCausalLM.from_pretrained(model_dir)
        ref = AutoModelForCausalLM.from_pretrained(model_dir)
        value, reward = classifier(), classifier()
        after_load = rss_gib()
        args = build_config(recipe, out)
        args.bf16 = False
        args.save_strategy, args.save_steps = IntervalStrategy.STEPS, updates
        PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                   value_model=value, train_dataset=prompts.dataset()).train()
        checkpoint = out / f"checkpoint-{updates}"
    estimate = None
    if name == "ppo-align":
        from ppo_align.planning import plan_memory

        estimate = plan_memory(recipe, device="cpu").total / GiB  # `ppo-align plan`'s figure, for its error
    return {"side": name, "plan_estimate_gib": estimate, "after_imports_gib": after_imports, "after_models_loaded_gib": after_load,
            "peak_gib": peak_gib(), "seconds": time.perf_counter() - started,
            "checkpoint_gib": dir_gib(checkpoint) if checkpoint.exists() else None,
            "checkpoint_files": sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())
            if checkpoint.exists() else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--random-init", choices=sorted(RANDOM_SHAPES), help="a randomly initialised model of this size")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--memory-limit-gib", type=float, default=20.0,
                        help="address-space limit of each side's process: a side that needs more fails instead of swapping")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for both sides, e.g. ppo.per_device_train_batch_size=4")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    if args.side:  # a child process: one side
        print("RESULT " + json.dumps(side(args.side, args.model, args.updates, Path(args.out), args.overrides)))
        return

    work = Path(tempfile.mkdtemp(prefix="ppo-align-bench-"))
    model = str(random_model(args.random_init, work / f"random-{args.random_init}")) if args.random_init else args.model
    results = {}
    for name in SIDES:
        limit = int(args.memory_limit_gib * GiB)
        child = subprocess.run(
            [sys.executable, __file__, "--side", name, "--model", model, "--updates", str(args.updates),
             "--out", str(work / name), *(f"--set={o}" for o in args.overrides)],
            capture_output=True, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        results[name] = json.loads(lines[-1][7:]) if lines else {
            "side": name, "failed": child.returncode, "error": (child.stderr.strip().splitlines() or ["?"])[-1][:300]}
        print(json.dumps(results[name]))
    ours = results["ppo-align"]
    ratios = {name: {
        "peak_ratio": ours["peak_gib"] / theirs["peak_gib"] if "peak_gib" in ours and "peak_gib" in theirs else None,
        "checkpoint_size_ratio": ours["checkpoint_gib"] / theirs["checkpoint_gib"]
        if ours.get("checkpoint_gib") and theirs.get("checkpoint_gib") else None,
    } for name, theirs in results.items() if name != "ppo-align"}
    result = {"benchmark": "ppo_memory", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "model": args.random_init and f"random-init {args.random_init}" or args.model, "updates": args.updates,
              "overrides": args.overrides,
              "memory_limit_gib": args.memory_limit_gib, "sides": results, "vs": ratios,
              "plan_error": (ours["plan_estimate_gib"] / ours["peak_gib"] - 1) if ours.get("plan_estimate_gib") else None}
    output = args.output or f"benchmarks/results/ppo_memory{'-' + args.random_init if args.random_init else ''}.json"
    write_result(output, result)
    for name, r in ratios.items():
        print(f"peak RSS: ppo-align {ours.get('peak_gib', float('nan')):.2f} GiB, {name} "
              f"{results[name].get('peak_gib', float('nan')):.2f} GiB: ratio {r['peak_ratio'] and round(r['peak_ratio'], 2)}; "
              f"checkpoint size ratio {r['checkpoint_size_ratio'] and round(r['checkpoint_size_ratio'], 3)}")


if __name__ == "__main__":
    main()
