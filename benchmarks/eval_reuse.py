"""A checkpoint's eval with and without the reference's kept prompt encodings, through the real eval harness.

The harness evaluates each set reference first and keeps the reference's prompt encodings, so each
checkpoint's KL pass runs over its response tokens only (`inference.ReferencePrompts`). This runs the
same eval (reference + N checkpoints, the demo's response length) with that store on and with it off
(`REFERENCE_PROMPTS_BYTES = 0`: each checkpoint encodes the prompts under the reference again before its
response pass), alternating the two sides, and reports the checkpoints' eval seconds on each side and
their ratio. Responses, refusal margins and KL must be identical: only the work differs.

    python benchmarks/eval_reuse.py [--checkpoints 2] [--limit 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import machine, write_result
from checkpoint_sweep import make_checkpoints

from ppo_align import evaluate, models
from ppo_align.evaluation import harness
from ppo_align.recipe.schema import ModelSection


def checkpoint_seconds(results) -> float:
    return sum(c["seconds"] for c in results.data["computed"] if c["target"] != "reference")


def records(results, field: str) -> list:
    return [r.get(field) for target, sets in sorted(results.data["records"].items()) if target != "reference"
            for _, rows in sorted(sets.items()) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/eval_reuse.json")
    args = parser.parse_args()

    model_dir = models.resolve_model_dir(ModelSection(source=args.model).source)
    work = Path(tempfile.mkdtemp(prefix="ppo-align-bench-"))
    adapters = make_checkpoints(model_dir, args.checkpoints, work)
    options = dict(model=args.model, adapters=adapters, sets=["boundary", "knowledge"], limit=args.limit,
                   max_new_tokens=args.max_new_tokens, progress=False)
    evaluate(output=work / "warm-up", **{**options, "adapters": adapters[:1], "limit": 8})  # excluded
    kept = harness.REFERENCE_PROMPTS_BYTES
    seconds: dict[str, list[float]] = {"kept": [], "from_scratch": []}  # from scratch: the prompts encoded again
    runs = {}
    for r in range(args.repeats):
        for side in ("kept", "from_scratch") if r % 2 == 0 else ("from_scratch", "kept"):
            harness.REFERENCE_PROMPTS_BYTES = kept if side == "kept" else 0
            runs[side] = evaluate(output=work / f"{side}-{r}", **options)
            seconds[side].append(checkpoint_seconds(runs[side]))
    harness.REFERENCE_PROMPTS_BYTES = kept
    a, b = runs["kept"], runs["from_scratch"]
    kl_a, kl_b = records(a, "kl"), records(b, "kl")
    result = {
        "benchmark": "eval_reuse", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "model": args.model,
        "sets": options["sets"], "limit": args.limit, "max_new_tokens": args.max_new_tokens,
        "checkpoints": args.checkpoints, "repeats": args.repeats, "checkpoint_eval_s": seconds,
        "speedup": statistics.median(seconds["from_scratch"]) / statistics.median(seconds["kept"]),
        "identical_responses": records(a, "response") == records(b, "response"),
        "identical_margins": records(a, "margin") == records(b, "margin"),
        "identical_kl": kl_a == kl_b,
        "kl_mean": statistics.mean(kl_a),
    }
    write_result(args.output, result)
    print(f"{args.checkpoints} checkpoints' eval: {statistics.median(seconds['from_scratch']):.1f}s encoding the "
          f"prompts again, {statistics.median(seconds['kept']):.1f}s on the reference's kept prompts: "
          f"{result['speedup']:.2f}x; identical responses {result['identical_responses']}, margins "
          f"{result['identical_margins']}, KL {result['identical_kl']} (mean {result['kl_mean']:.4f} per response)")
    print(json.dumps({k: result[k] for k in ("speedup", "identical_responses", "identical_margins", "identical_kl")}))


if __name__ == "__main__":
    main()
