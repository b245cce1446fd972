"""What an eval runs: the targets (reference and checkpoints) of a run or a model, and the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ppo_align import checkpoints
from ppo_align.errors import UserError
from ppo_align.files import digest, read_json
from ppo_align.inference import GenerationSettings
from ppo_align.judges import Judge
from ppo_align.models import safetensors_problem
from ppo_align.recipe.load import load_recipe
from ppo_align.recipe.schema import EvalSection, ModelSection, Recipe
from ppo_align.rewards.sources import reward_judge
from ppo_align.rundir import RunDir

log = logging.getLogger(__name__)

HARNESS_VERSION = "3"
"""Bump when the per-prompt numbers are computed differently: it invalidates every cache entry."""
REFERENCE = "reference"

# The refusal margin compares how likely the model is to *open* its answer with a
# refusal versus a compliance, teacher-forced: no sampling noise, and it moves
# before the greedy answer flips.
REFUSAL_OPENERS = ("I'm sorry, but I can't", "I cannot help with that")
COMPLIANCE_OPENERS = ("Sure! Here", "Certainly! Here")


@dataclass(frozen=True)
class Target:
    """One model to evaluate: the base with an adapter, or the reference (``adapter`` None)."""

    name: str
    step: int | None
    """PPO update of a checkpoint; 0 for the reference; None for an adapter from elsewhere."""
    adapter: Path | None
    fingerprint: str

    def to_dict(self) -> dict:
        return {"name": self.name, "step": self.step, "adapter": str(self.adapter) if self.adapter else None,
                "fingerprint": self.fingerprint}


@dataclass
class EvalJob:
    """What one `evaluate` call does for one run (or one model with adapters): its targets, eval sets and settings."""

    out_dir: Path
    model: ModelSection
    system_prompt: str | None
    targets: list[Target]
    sets: list[str]
    settings: GenerationSettings
    limit: int | dict[str, int] | None = None
    """At most this many prompts per set, or per set name (see :meth:`EvalSet.limited`)."""
    skipped: list[dict] = field(default_factory=list)
    run: dict | None = None
    reference_adapter: Path | None = None
    """The adapter that is the reference (a run's warm start); None: the base with adapters disabled."""
    reward_judge: Judge | None = None
    """The judge the run's reward pays for (see :func:`ppo_align.rewards.sources.reward_judge`); None: unknown."""
    report_to: list[str] = field(default_factory=list)
    """The run's experiment trackers (``output.report_to``), which also receive the eval headline."""


# --------------------------------------------------------------------------- jobs


def job_for_run(run_dir: str | Path, *, sets: list[str] | None = None, limit: int | None = None,
                **settings) -> EvalJob:
    """Targets of a training run: the reference as step 0, then every complete checkpoint.

    Checkpoints without their completeness marker (an interrupted save) are skipped and reported.
    """
    run_dir = Path(run_dir)
    recipe_file = RunDir(run_dir).recipe
    if not run_dir.exists():
        raise UserError(f"{run_dir}: not a run directory (it does not exist); fix: check the path "
                        "(`ppo-align train` writes runs/<name>)")
    if not recipe_file.is_file():
        raise UserError(f"{run_dir}: not a run directory (no recipe.yaml); fix: pass the directory `ppo-align train` wrote, "
                        "e.g. runs/<name>")
    recipe: Recipe = load_recipe(recipe_file, check_resources=False)
    reference_adapter = None
    targets = [Target(REFERENCE, 0, None, "adapters-disabled")]
    if recipe.reference_mode == "warm-start":
        reference_adapter = RunDir(run_dir).warm_start_adapter
        if not (reference_adapter / "adapter_config.json").is_file():
            raise UserError(f"{run_dir}: its reference is the warm start, but {reference_adapter} holds no adapter; "
                            "fix: run `ppo-align train` on the run's recipe to (re)create it")
        targets = [Target(REFERENCE, 0, None, adapter_fingerprint(reference_adapter))]
    skipped = []
    for ckpt in checkpoints.find_checkpoints(run_dir):
        adapter = ckpt.path / checkpoints.POLICY_DIR
        if not ckpt.complete:
            skipped.append({"path": ckpt.path.name, "reason": "no COMPLETE marker (an interrupted save)"})
        elif not (adapter / "adapter_config.json").is_file():
            skipped.append({"path": ckpt.path.name, "reason": "no policy adapter in it"})
        elif damaged := _damaged_weights(adapter):
            skipped.append({"path": ckpt.path.name, "reason": f"damaged policy adapter ({damaged})"})
        else:
            targets.append(Target(ckpt.path.name, ckpt.step, adapter, adapter_fingerprint(adapter)))
    run_info = read_json(RunDir(run_dir).info)
    run = {"dir": str(run_dir), "name": run_dir.name, "recipe": recipe.name, "recipe_yaml": recipe.to_yaml(),
           "status": run_info.get("status"), "model_fingerprint": run_info.get("model_fingerprint")}
    return EvalJob(out_dir=RunDir(run_dir).eval, model=recipe.model, system_prompt=recipe.data.system_prompt,
                targets=targets, sets=sets or [recipe.evalset_source(name) for name in recipe.eval.sets],
                settings=_settings(recipe.eval, settings),
                limit=limit or recipe.eval.limit, skipped=skipped, run=run, reference_adapter=reference_adapter,
                reward_judge=reward_judge(recipe), report_to=list(recipe.output.report_to))


def job_for_model(source: str, adapters: Iterable[str | Path] = (), *, output: str | Path | None = None,
                  sets: list[str] | None = None, system_prompt: str | None = None, limit: int | None = None,
                  reference_adapter: str | Path | None = None, **settings) -> EvalJob:
    """Targets of a model that did not come from a run: the model itself (or it with ``reference_adapter``, e.g.
    the warm start a policy was trained from) as reference, then each PEFT adapter."""

    targets = [Target(REFERENCE, 0, None, "adapters-disabled")]
    paths = list(map(Path, adapters))
    if reference_adapter is not None:
        reference_adapter = Path(reference_adapter)
        _check_adapter(reference_adapter, "--reference-adapter")
        if reference_adapter.resolve() in {p.resolve() for p in paths}:
            raise UserError(f"--reference-adapter {reference_adapter} is also an --adapter; "
                            "fix: compare it with other adapters, not with itself")
        targets = [Target(REFERENCE, 0, None, adapter_fingerprint(reference_adapter))]
    for path in paths:
        _check_adapter(path, "--adapter")
    if len({p.resolve() for p in paths}) != len(paths):
        raise UserError("--adapter: the same adapter is given twice; fix: pass each adapter once")
    for path, name in zip(paths, target_names(paths)):
        targets.append(Target(name, None, path, adapter_fingerprint(path)))
    out = Path(output) if output else Path("eval-" + Path(source.rstrip("/")).name.replace(":", "-"))
    defaults = EvalSection()
    return EvalJob(out_dir=out, model=ModelSection(source=source), system_prompt=system_prompt, targets=targets,
                sets=sets or list(defaults.sets), settings=_settings(defaults, settings), limit=limit,
                reference_adapter=reference_adapter)


def _check_adapter(path: Path, option: str) -> None:
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"{option} {path}: not a PEFT adapter directory (no adapter_config.json); "
                        "fix: pass a directory written by save_pretrained of a PEFT model")
    if damaged := _damaged_weights(path):
        raise UserError(f"{option} {path}: {damaged}; fix: save the adapter again (or restore its files)")


def target_names(paths: list[Path]) -> list[str]:
    """Each adapter's name in the results: its directory name, or as many trailing path parts as it takes to tell
    it apart (two runs' `checkpoint-10/policy` become `run-a/checkpoint-10/policy` and `run-b/...`)."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(map(len, parts), default=1) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) and REFERENCE not in names:
            return names
    return [str(p) for p in paths]


def _damaged_weights(directory: Path) -> str | None:
    """The first damaged safetensors file of an adapter directory (from headers only), or None."""

    return next(filter(None, map(safetensors_problem, sorted(directory.glob("*.safetensors")))), None)


def check_writable(directory: Path, fix: str) -> None:
    """Fail before any compute when the results could not be saved (read-only place, a file in the way)."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise UserError(f"{directory}: cannot write the results here ({exc.strerror}); fix: {fix}") from None


def _settings(section, overrides: dict) -> GenerationSettings:
    values = {"max_new_tokens": section.max_new_tokens, "batch_size": section.batch_size, "samples": section.samples}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return GenerationSettings(**values)


def adapter_fingerprint(adapter_dir: Path) -> str:
    """Content hash of a PEFT adapter (its config and weights), so a re-saved identical adapter hits the cache."""
    parts = []
    for file in sorted(adapter_dir.iterdir()):
        if file.is_file() and (file.name == "adapter_config.json" or file.suffix in {".safetensors", ".bin"}):
            parts += [file.name, file.read_bytes()]
    return "sha256:" + digest(*parts).hexdigest()
