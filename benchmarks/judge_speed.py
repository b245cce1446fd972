"""Judge speed: responses labelled per second by the learned judge (target: >= 20/s on a 2-core CPU), beside the
rule judge, on judge_gold's dev split (real lengths: short embedded-model outputs and long assistant answers).

    python benchmarks/judge_speed.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_common import machine, write_result

from ppo_align.judges import build_judge
from ppo_align.judges.agreement import gold_split

TARGET = 20.0


def rate(judge, prompts, responses, repeats: int) -> float:
    judge.label(prompts[:4], responses[:4])  # loads the model: not part of the rate
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        judge.label(prompts, responses)
        best = max(best, len(responses) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = gold_split("dev")
    prompts, responses = [r.prompt for r in rows], [r.response for r in rows]
    learned = rate(build_judge("learned"), prompts, responses, args.repeats)
    rules = rate(build_judge("rules"), prompts, responses, args.repeats)
    result = {"machine": machine(), "rows": len(rows), "learned_per_second": round(learned, 1),
              "rules_per_second": round(rules, 1), "target_per_second": TARGET, "met": learned >= TARGET}
    write_result(Path(__file__).parent / "results" / "judge_speed.json", result)
    print(f"learned judge {learned:.1f} responses/s (target {TARGET}), rules {rules:.0f}/s, on {len(rows)} dev rows: "
          f"{'met' if learned >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
