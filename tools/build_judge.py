"""Build the learned judge's shipped weights from the repository, and measure it.

    python tools/build_judge.py                  # train on judge_gold's train split -> ppo_align/judges/learned/
    python tools/build_judge.py --out DIR        # somewhere else (the rebuild test compares it with the shipped one)
    python tools/build_judge.py --measure dev    # only measure the shipped weights (and the rule judge) on a split

Choose settings on the dev split only. The test split is measured once per shipped version, for the README and
the datasheet; tests/test_judge_quality.py holds the test-split figures to their targets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ppo_align.evalsets import load_evalset
from ppo_align.judges import build_judge
from ppo_align.judges.agreement import gold_split, subset_scorecards
from ppo_align.judges.learned import SHIPPED_WEIGHTS, JudgeTraining, LearnedJudge, train_learned_judge


def measure(judge, split: str) -> None:
    rows = gold_split(split)
    cards = subset_scorecards(rows, judge.label([r.prompt for r in rows], [r.response for r in rows]))
    print(f"{judge.name}@{judge.version} on {split}: {cards.pop('overall').line()}")
    for name, card in cards.items():
        print(f"  {name}: {card.line()}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--measure", choices=("dev", "test"), help="measure the weights in --out on this split")
    args = parser.parse_args(argv)
    if args.measure:
        for judge in (LearnedJudge(args.out), build_judge("rules")):
            measure(judge, args.measure)
        return 0
    gold = load_evalset("judge_gold")
    train = [r.model_dump() for r in gold.items if r.split == "train"]
    out = train_learned_judge(train, args.out, JudgeTraining(), data_digest=gold.sha256)
    print(f"{out}: trained on {len(train)} rows of judge_gold {gold.version}")
    measure(LearnedJudge(out), "dev")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
