"""`ppo-align train`: the run directory around a PPO run.

Creates or reopens ``runs/<name>/``, decides between a fresh start and a
resume, records what was run (``recipe.yaml``, ``run.json``), loads the models,
prompts and reward, and hands them to :mod:`ppo_align.training.ppo`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ppo_align import checkpoints, models, provenance
from ppo_align.errors import UserError
from ppo_align.files import write_atomic
from ppo_align.processes import process_state
from ppo_align.recipe.schema import Recipe
from ppo_align.rewards.audit import audit_reward, write_audit
from ppo_align.rewards.sources import build_scorer
from ppo_align.rundir import LOGS, RunDir
from ppo_align.training.monitor import Monitor
from ppo_align.training.prompts import load_prompts
from ppo_align.training.warm_start import ensure_warm_start

log = logging.getLogger(__name__)

ResumeMode = Literal["auto", "resume", "fresh"]
# Keys that may change between a run and its resumption: how long to train, and where output goes.
RESUMABLE_CHANGES = {("ppo", "total_episodes"), ("ppo", "max_kl"), ("output",)}


@dataclass
class RunResult:
    """What `train` produced."""

    dir: Path
    steps: int
    checkpoints: list[Path] = field(default_factory=list)
    best: Path | None = None
    """The last checkpoint whose behaviour check met the monitor rules (None without a monitor)."""
    stopped_by: str | None = None
    """Why a monitor rule ended the run early, if one did."""


def train(recipe: Recipe, *, resume: ResumeMode = "auto", force: bool = False, progress: bool = True) -> RunResult:
    """Train a recipe with its algorithm (PPO, RLOO or GRPO), resuming its run directory if it has a complete checkpoint.

    Args:
        recipe: a loaded recipe (see :func:`ppo_align.load_recipe`).
        resume: "auto" continues from the latest complete checkpoint if there is one;
            "resume" requires one; "fresh" deletes the run's checkpoints and logs first.
        force: reuse a run directory that was made by a different recipe.
        progress: show a progress bar.

    Returns:
        The run directory, the number of updates done, and the checkpoints.
    """

    # One process, or one of several (accelerate launch, torchrun): all train, the main one writes the run files.
    processes = process_state()
    if processes.num_processes > 1 and recipe.algorithm != "ppo":
        # TRL's group trainers size their generation batch across processes; the prompt order here is sized for one.
        raise UserError(f"algorithm = {recipe.algorithm!r}: training in several processes is supported for PPO only so "
                        "far; fix: train in one process, or use algorithm: ppo")
    main = processes.is_main_process
    if not main:  # one voice in the log: the other processes only report problems
        logging.getLogger("ppo_align").setLevel(logging.WARNING)
    run_dir = recipe.run_dir
    _prepare_run_dir(recipe, run_dir, resume, force, mutate=main)
    processes.wait_for_everyone()
    start_from = checkpoints.latest_complete(run_dir)
    info = _run_info(recipe, start_from)
    info["processes"] = processes.num_processes
    if main:
        write_atomic(RunDir(run_dir).recipe, recipe.to_yaml(relative_to=run_dir))
        write_atomic(RunDir(run_dir).info, json.dumps(info, indent=2))

    from transformers import set_seed

    models.reuse_freed_memory()
    model_dir = models.resolve_model_dir(recipe.model.source)
    tokenizer = models.load_tokenizer(recipe.model, model_dir)
    if recipe.ppo.train_last_layers:  # checked here, not minutes later after the warm start
        models.check_layer_count("ppo.train_last_layers", recipe.ppo.train_last_layers, model_dir)
    prompts = load_prompts(recipe, tokenizer)
    monitor = None
    if recipe.monitor.holdout:
        prompts, held_out = prompts.hold_out(recipe.monitor.holdout, recipe.ppo.seed)
        monitor = Monitor(recipe.monitor, held_out, tokenizer)
        log.info("monitor: %d training prompts held out for behaviour checks", len(held_out.input_ids))
    seconds = info["seconds"] = {}  # wall time per stage (a reused stage takes ~0)
    warm_start = None  # stages train (or are reused) first, so that PPO's seeding is the same either way
    if recipe.warm_start is not None:
        with _timed(seconds, "warm_start"):
            warm_start = ensure_warm_start(recipe, model_dir, tokenizer, progress=progress)
        info["warm_start"] = str(warm_start.relative_to(run_dir))
    with _timed(seconds, "reward"):
        scorer = build_scorer(recipe, tokenizer, model_dir=model_dir, progress=progress)  # may train a reward model
    if recipe.audit.enabled:
        with _timed(seconds, "audit"):
            _preflight(recipe, scorer, tokenizer, model_dir)
    set_seed(recipe.ppo.seed)  # the value head and LoRA initialisations draw from the global RNG
    progress_factory = functools.partial(_progress_bar, recipe.algorithm.upper()) if progress else None
    if recipe.algorithm == "ppo":
        from ppo_align.training.ppo import PPORun  # torch and TRL load here, not when the CLI starts

        log.info("loading the policy and value model (%s, 4-bit: %s)", recipe.model.source,
                 recipe.model.quantization.load_in_4bit)
        policy = models.load_policy(recipe.model, model_dir, tokenizer, warm_start=warm_start)
        value = models.load_value_model(recipe.model, recipe.value.lora, model_dir, tokenizer,
                                        reference=warm_start if recipe.value.trunk == "reference" else None)
        run = PPORun(recipe, run_dir, tokenizer, policy, value, scorer, prompts,
                     progress_factory=progress_factory, monitor=monitor)
    else:
        from ppo_align.training.grouped import GroupRun

        trainer = importlib.import_module(f"ppo_align.training.{recipe.algorithm}")  # imports that TRL trainer only
        log.info("loading the policy (%s, 4-bit: %s)", recipe.model.source, recipe.model.quantization.load_in_4bit)
        policy = models.load_policy(recipe.model, model_dir, tokenizer, warm_start=warm_start, reference=False)
        run = GroupRun(recipe, run_dir, tokenizer, policy, scorer, prompts, trainer.Trainer,
                       trainer.build_config(recipe, run_dir), progress_factory=progress_factory, monitor=monitor)
    if start_from:
        log.info("resuming %s from %s", run_dir, start_from.path.name)
    info["status"] = "running"
    rl_started = time.perf_counter()
    try:
        run.train(resume_from=start_from)
        info["status"] = f"stopped early: {run.stopped_by}" if run.stopped_by else "finished"
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        raise
    except Exception as exc:
        info["status"] = f"failed: {type(exc).__name__}"
        raise
    finally:
        info["ended"] = _now()
        seconds[recipe.algorithm] = round(time.perf_counter() - rl_started, 1)
        updates = _updates_logged(run_dir) - (int(start_from.progress()["step"]) if start_from else 0)
        if updates > 0 and seconds[recipe.algorithm]:
            # Includes the monitor's checks and checkpoint writes: what a user waits for.
            episodes = updates * recipe.rollout_batch_size * processes.num_processes
            info["episodes_per_minute"] = round(episodes * 60 / seconds[recipe.algorithm], 1)
        last = checkpoints.latest_complete(run_dir)
        info["last_checkpoint"] = last.path.name if last else None
        if recipe.monitor.holdout:
            best = checkpoints.best(run_dir)
            info["best_checkpoint"] = best.path.name if best else None
        if main:
            write_atomic(RunDir(run_dir).info, json.dumps(info, indent=2))
    done = [c.path for c in checkpoints.find_checkpoints(run_dir) if c.complete]
    best = checkpoints.best(run_dir) if monitor else None
    return RunResult(dir=run_dir, steps=run.total_updates, checkpoints=done, best=best.path if best else None,
                     stopped_by=run.stopped_by)


@contextlib.contextmanager
def _timed(seconds: dict, stage: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(time.perf_counter() - started, 1)


def _updates_logged(run_dir: Path) -> int:
    path = RunDir(run_dir).metrics
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0


def _preflight(recipe: Recipe, scorer, tokenizer, model_dir: str) -> None:
    """Audit the reward before PPO: warn, or stop, if it does not prefer the expected behaviour."""

    a = recipe.audit
    result = audit_reward(recipe, scorer, tokenizer, limit=a.limit, model_dir=model_dir)
    path = write_audit(result, recipe.run_dir)
    worst = result.worst
    share = worst["prefers_expected"]["rate"]
    log.info("reward audit: prefers the expected behaviour on %s (worst set: %s %.0f%%) — %s",
             ", ".join(f"{r['set']} {r['prefers_expected']['rate']:.0%}" for r in result.rows if r["category"] == "all"),
             worst["set"], 100 * share, path)
    for style in result.misread_styles:
        log.warning("reward audit: the reward pays %r (labelled %s) like the other label on %.0f%% of prompts",
                    style["response"], style["label"], 100 * (1 - style["paid_as_labelled"]["rate"]))
    if not result.passed(a.min_accuracy):
        message = (f"reward audit: the reward prefers the expected behaviour on only {share:.0%} of {worst['set']} prompts "
                   f"(audit.min_accuracy = {a.min_accuracy:.0%}; details in {path}); PPO would learn that bias")
        if a.on_fail == "stop":
            raise UserError(message + "; fix: improve the reward (pairs, payoffs) or set audit.on_fail: warn")
        log.warning("%s", message)


def _prepare_run_dir(recipe: Recipe, run_dir: Path, resume: ResumeMode, force: bool, *, mutate: bool = True) -> None:
    """Check the run directory against the recipe and the resume mode; with ``mutate`` (the main process),
    clear what a fresh start or a resume discards."""
    saved = RunDir(run_dir).recipe
    if resume == "fresh":
        if mutate and run_dir.exists():
            for ckpt in checkpoints.find_checkpoints(run_dir):
                shutil.rmtree(ckpt.path)
            for name in LOGS:
                RunDir(run_dir).log(name).unlink(missing_ok=True)
    elif saved.exists() and not force:
        changed = _changed_keys(yaml.safe_load(saved.read_text()) or {}, recipe.dump(relative_to=run_dir))
        if changed:
            raise UserError(
                f"{run_dir}: was made by a different recipe (changed: {', '.join(changed[:5])}); "
                "fix: set output.name to a new run, pass --fresh to start over, or --force to continue anyway"
            )
    latest = checkpoints.latest_complete(run_dir) if resume != "fresh" else None
    if resume == "resume" and latest is None:
        raise UserError(f"{run_dir}: no complete checkpoint to resume from; fix: drop --resume to start the run")
    if not mutate:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if latest is not None:
        _truncate_logs(run_dir, latest.step)
    elif resume != "fresh":
        for name in LOGS:  # logs of a run that never reached a checkpoint
            RunDir(run_dir).log(name).unlink(missing_ok=True)


def _changed_keys(old: dict, new: dict, prefix: tuple = ()) -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        path = prefix + (key,)
        if any(path[: len(allowed)] == allowed for allowed in RESUMABLE_CHANGES):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, path)
        elif a != b:
            changed.append(".".join(path))
    return changed


def _truncate_logs(run_dir: Path, step: int) -> None:
    """Drop log lines past the checkpoint we resume from, so metrics stay continuous."""
    for name in LOGS:
        path = RunDir(run_dir).log(name)
        if not path.exists():
            continue
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut short by a crash
        write_atomic(path, "".join(line + "\n" for line in kept))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _run_info(recipe: Recipe, start_from) -> dict:
    return {
        "name": recipe.name,
        "algorithm": recipe.algorithm,
        "started": _now(),
        "resumed_from": start_from.path.name if start_from else None,
        "versions": provenance.versions(),
        "git_revision": provenance.git_revision(),
        "model_source": recipe.model.source,
        "model_fingerprint": models.model_fingerprint(recipe.model.source, recipe.model.revision),
    }


def _progress_bar(name: str, total: int, done: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"), transient=False,
    )
    task = bar.add_task("ppo", total=total, completed=done, stats="")
    bar.start()

    def update(step, metrics, check=None):
        if step is None:
            bar.stop()
            return
        stats = f"reward {metrics.get('reward_mean', float('nan')):+.3f}  kl {metrics.get('kl', float('nan')):.3f}"
        if check is not None:
            stats += f"  {check.summary()}"
        bar.update(task, completed=step, stats=stats)

    return update
