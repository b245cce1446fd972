"""The run directory, ``runs/<name>/``: the one place that knows what every file in it is called.

Training, evaluation and reporting ask a :class:`RunDir` for a path instead of spelling a name, so a
file cannot be written under one name and looked for under another. :data:`LAYOUT` describes each entry
for people; the README's run-directory listing is checked against it by a test. What lies *inside* a
checkpoint (adapters, optimizer state, the ``COMPLETE`` marker) belongs to :mod:`ppo_align.checkpoints`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# name in runs/<name>/ -> what it holds (the README's listing must match; tests/test_rundir.py)
LAYOUT: dict[str, str] = {
    "recipe.yaml": "the resolved recipe, as run",
    "run.json": "algorithm, package versions, git revision, model fingerprint, start/end, status, episodes per minute",
    "metrics.jsonl": "one line per update: reward, KL, entropy, losses, clip fractions, learning rate, speed",
    "samples.jsonl": "prompt / response / reward samples every output.sample_every updates",
    "monitor.jsonl": "behaviour checks on held-out training prompts at step 0 and each checkpoint",
    "reward-audit.json": "the reward pre-flight: how often the reward prefers the expected behaviour",
    "warm-start/": "adapter/ (the warm-start LoRA, the reference) and stage.json (input hash, loss, time)",
    "reward-model/": "adapter/ (a reward model trained from preference pairs) and stage.json (held-out accuracy)",
    "checkpoint-<step>/": "policy/, value/ (PPO only), state/ (optimizer, scheduler, RNG), progress.json, COMPLETE (last)",
    "eval/": "results.json (every target x set: metrics, shifts, flips, per-prompt records), cache/, review.csv + review.key.csv",
    "report/": "report.md, report.html (self-contained) and plots/",
    "tensorboard/": "with output.report_to: [tensorboard]: TRL's scalars, monitor rates, samples, eval headline",
    "export/": "from `ppo-align export`: a checkpoint as a PEFT adapter (or merged model) with a model card",
}



def listing() -> str:
    """The layout as the README shows it (tests/test_rundir.py keeps the two equal)."""
    width = max(map(len, LAYOUT)) + 2
    return "runs/<name>/\n" + "".join(f"  {name:<{width}}{what}\n" for name, what in LAYOUT.items())


CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# The logs a run appends to; resuming cuts them back to the checkpoint's step.
LOGS = ("metrics.jsonl", "samples.jsonl", "monitor.jsonl")
STAGE_INFO = "stage.json"  # inside warm-start/ and reward-model/
ADAPTER = "adapter"  # the LoRA adapter a stage trains, inside its directory
# Inside an eval directory: runs/<name>/eval/, or the --output of `ppo-align eval --model`.
RESULTS = "results.json"
EVAL_CACHE = "cache"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory; creating the object touches nothing on disk."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def info(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def monitor(self) -> Path:
        return self.path / "monitor.jsonl"

    def log(self, name: str) -> Path:
        if name not in LOGS:
            raise ValueError(f"{name!r} is not a run log ({', '.join(LOGS)})")
        return self.path / name

    @property
    def reward_audit(self) -> Path:
        return self.path / "reward-audit.json"

    @property
    def warm_start(self) -> Path:
        return self.path / "warm-start"

    @property
    def warm_start_adapter(self) -> Path:
        """The warm start's LoRA adapter: PPO's starting point, and its reference when frozen."""
        return self.warm_start / ADAPTER

    @property
    def reward_model(self) -> Path:
        return self.path / "reward-model"

    @property
    def reward_model_adapter(self) -> Path:
        return self.reward_model / ADAPTER

    def checkpoint(self, step: int) -> Path:
        return self.path / f"checkpoint-{step}"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def results(self) -> Path:
        return self.eval / RESULTS

    @property
    def eval_cache(self) -> Path:
        return self.eval / EVAL_CACHE

    @property
    def review_sheet(self) -> Path:
        """The labelling sheet of the run's own responses (`ppo-align judge --review`)."""
        return self.eval / "review.csv"

    @property
    def report(self) -> Path:
        return self.path / "report"
