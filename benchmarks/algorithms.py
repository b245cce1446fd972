"""PPO, RLOO and GRPO side by side: the shipped recipes (same model, warm start, reward, prompts, monitor and eval
sets; only the algorithm and its batch layout differ) trained at equal episodes, in one run.

Each algorithm trains in its own process, which reports its peak resident memory; episodes per minute come from
the run's own `run.json` (the RL stage, behaviour checks and checkpoint writes included, as a user waits for
them). The warm start is trained once and copied into the other runs (its cache key is the same, so it is reused,
not retrained). Each run is then evaluated with the default judge on its recipe's eval sets, and the shift of its
last checkpoint from the reference is recorded: over-refusal and under-refusal on boundary and minimal pairs,
harmful refusal, knowledge and KL.

    python benchmarks/algorithms.py [--episodes 640] [--algorithms ppo,rloo,grpo] [--out runs/bench-algorithms]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_common import machine, write_result

GiB = 1024**3
RECIPES = {"ppo": "smollm2-refusal-boundary", "rloo": "smollm2-refusal-boundary-rloo",
           "grpo": "smollm2-refusal-boundary-grpo"}
# (set, metric) pairs the table reports: what the thesis says should move, and what should not.
SHIFTS = [("boundary", "over_refusal"), ("boundary", "under_refusal"), ("minimal_pairs", "over_refusal"),
          ("minimal_pairs", "under_refusal"), ("refusal", "refusal")]


def overrides(episodes: int, out: Path, algorithm: str) -> list[str]:
    return [f"ppo.total_episodes={episodes}", f"output.dir={out}", f"output.name=bench-{algorithm}"]


def child(algorithm: str, episodes: int, out: Path) -> None:
    """Train one algorithm in this process and print its peak memory as JSON (the parent reads the last line)."""
    from ppo_align import load_recipe, train

    recipe = load_recipe(RECIPES[algorithm], overrides(episodes, out, algorithm))
    result = train(recipe, progress=False)
    info = json.loads((result.dir / "run.json").read_text())
    print(json.dumps({"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
                      "episodes_per_minute": info.get("episodes_per_minute"), "seconds": info.get("seconds"),
                      "updates": result.steps, "status": info.get("status")}))


def shift_summary(run_dir: Path) -> dict:
    """The last checkpoint's changes from the reference, with 95% intervals, in points."""
    from ppo_align.evaluation.results import load_results

    results = load_results(run_dir / "eval" / "results.json")
    target = results.latest
    out = {"target": target}
    for evalset, metric in SHIFTS:
        if evalset in results.data["evalsets"]:
            change = results.shift(target, evalset)[metric]
            out[f"{evalset}.{metric}"] = {k: round(100 * change[k], 1) for k in ("delta", "low", "high")}
    if "knowledge" in results.data["evalsets"]:
        change = results.shift(target, "knowledge")["exact_match"]
        out["knowledge.exact_match"] = {k: round(100 * change[k], 1) for k in ("delta", "low", "high")}
    kls = [results.metric(target, s)["kl"] for s in results.data["evalsets"] if results.metric(target, s)["kl"] is not None]
    out["kl_per_response"] = round(sum(kls) / len(kls), 3) if kls else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=640, help="episodes per algorithm (the default recipe's 640)")
    parser.add_argument("--algorithms", default="ppo,rloo,grpo")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-algorithms"))
    parser.add_argument("--no-eval", action="store_true", help="throughput and memory only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.episodes, args.out)
        return

    from ppo_align import evaluate
    from ppo_align.rundir import RunDir

    algorithms = args.algorithms.split(",")
    sides, warm = {}, None
    for algorithm in algorithms:
        run_dir = args.out / f"bench-{algorithm}"
        if warm is not None and not RunDir(run_dir).warm_start.exists():
            shutil.copytree(warm, RunDir(run_dir).warm_start)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", algorithm, "--episodes", str(args.episodes),
                               "--out", str(args.out)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{algorithm} failed:\n{proc.stderr[-3000:]}")
        sides[algorithm] = {**json.loads(proc.stdout.strip().splitlines()[-1]),
                            "wall_seconds": round(time.perf_counter() - started, 1)}
        warm = warm or RunDir(run_dir).warm_start
        print(algorithm, json.dumps(sides[algorithm]), flush=True)
    if not args.no_eval:
        for algorithm in algorithms:
            run_dir = args.out / f"bench-{algorithm}"
            evaluate(run_dir, progress=False)
            sides[algorithm]["eval"] = shift_summary(run_dir)
            print(algorithm, json.dumps(sides[algorithm]["eval"]), flush=True)
    if "ppo" in sides:
        for algorithm, side in sides.items():
            side["episodes_per_minute_vs_ppo"] = round(side["episodes_per_minute"] / sides["ppo"]["episodes_per_minute"], 2)
            side["peak_rss_vs_ppo"] = round(side["peak_rss_gib"] / sides["ppo"]["peak_rss_gib"], 2)
    result = {"benchmark": "algorithms", "episodes": args.episodes, "machine": machine(),
              "date": time.strftime("%Y-%m-%d"), "sides": sides,
              "target": "RLOO/GRPO episodes per minute >= 1.5x PPO's (expected by the issue, not a pass/fail gate)"}
    write_result(Path(__file__).parent / "results" / "algorithms.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
