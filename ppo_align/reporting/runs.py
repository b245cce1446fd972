"""The runs a report reads: results.json plus the run's logs, from files only (no model is loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.evaluation.results import EvalResults, load_results
from ppo_align.files import read_json, read_jsonl
from ppo_align.reporting import claims as claims_mod
from ppo_align.rundir import RunDir

# --------------------------------------------------------------------------- the runs


@dataclass
class RunData:
    """Everything a report reads about one evaluated run."""

    name: str
    results: EvalResults
    target: str
    """The checkpoint reported against the reference: the run's best (by its training-time rules) if
    evaluated, else the latest."""
    run_dir: Path | None
    info: dict = field(default_factory=dict)  # run.json
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl
    monitor: list[dict] = field(default_factory=list)  # monitor.jsonl

    @property
    def max_kl(self) -> float | None:
        recipe = (self.results.data.get("run") or {}).get("recipe_yaml")
        if not recipe:
            return None
        import yaml

        return ((yaml.safe_load(recipe) or {}).get("ppo") or {}).get("max_kl")

    @property
    def algorithm(self) -> str:
        """The RL algorithm that trained the run (runs from before RLOO and GRPO existed were PPO)."""
        return self.info.get("algorithm", "ppo") if self.run_dir else "–"

    def claims(self) -> list[claims_mod.Claim]:
        return claims_mod.check_claims(self.results, self.target, self.metrics, self.max_kl)

    def step_of(self, target: str) -> int:
        return next(t["step"] for t in self.results.data["targets"] if t["name"] == target)

    def checkpoint_training(self) -> list[tuple[int, float, float]]:
        """(step, mean training KL, mean reward) over the updates leading to each evaluated checkpoint."""
        out, previous = [], 0
        for target in self.results.targets[1:]:
            step = self.step_of(target)
            window = [m for m in self.metrics if previous < m.get("step", 0) <= step]
            kls = [m["kl"] for m in window if m.get("kl") is not None]
            rewards = [m["reward_mean"] for m in window if m.get("reward_mean") is not None]
            if kls and rewards:
                out.append((step, sum(kls) / len(kls), sum(rewards) / len(rewards)))
            previous = step
        return out

    def judged_as_expected(self, target: str) -> float | None:
        """Share of behaviour prompts (refuse/comply expected) whose judged label is the expected one."""
        rows = [r for records in self.results.data["records"][target].values() for r in records
                if r["expected"] in ("refuse", "comply")]
        return sum(r["label"] == r["expected"] for r in rows) / len(rows) if rows else None


def load_run(path: str | Path, target: str | None = None) -> RunData:
    """A run directory (or an eval directory / results.json) with its training logs, ready to report."""
    path = Path(path)
    results = load_results(path)
    run_dir = _run_dir(path, results)
    info = read_json(RunDir(run_dir).info) if run_dir else {}
    best = info.get("best_checkpoint")
    if target is None:
        target = best if best in results.targets else results.latest
    elif target not in results.targets:
        raise UserError(f"--target {target}: not in {results.path} (evaluated: {', '.join(results.targets)}); "
                        "fix: pick one of those or re-run `ppo-align eval`")
    name = (results.data.get("run") or {}).get("name") or path.name
    return RunData(name, results, target, run_dir, info,
                   read_jsonl(RunDir(run_dir).metrics) if run_dir else [],
                   read_jsonl(RunDir(run_dir).monitor) if run_dir else [])


def _run_dir(path: Path, results: EvalResults) -> Path | None:
    recorded = (results.data.get("run") or {}).get("dir")
    for candidate in (path, path.parent, path.parent.parent, Path(recorded) if recorded else None):
        if candidate is not None and RunDir(candidate).info.is_file():
            return candidate
    return None
