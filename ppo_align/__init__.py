"""ppo-align: use PPO to change when a model refuses, hedges or complies, and measure what changed.

The public API mirrors the CLI one call per command::

    from ppo_align import evaluate, load_recipe, train
    recipe = load_recipe("recipes/smollm2-refusal-boundary.yaml", overrides=["ppo.total_episodes=64"])
    run = train(recipe)
    results = evaluate(run.dir)
    results.metrics_frame()

Heavy libraries (torch, transformers, TRL) are imported lazily inside the
functions that need them, so ``import ppo_align`` and ``ppo-align --help`` stay fast.
"""

from __future__ import annotations

from ppo_align import hub as _hub

__version__ = "0.1.0"

# Before any Hugging Face library loads: no telemetry, no hub kernels for bitsandbytes (see hub.py).
_hub.keep_quiet()

from ppo_align.errors import UserError
from ppo_align.recipe.load import load_recipe, shipped_recipes
from ppo_align.recipe.schema import Recipe

__all__ = [
    "Recipe",
    "UserError",
    "__version__",
    "load_recipe",
    "shipped_recipes",
    "audit_reward",
    "evaluate",
    "export",
    "judge",
    "load_results",
    "plan",
    "report",
    "review_sheet",
    "train",
]


def train(recipe, **options):
    """Run PPO for a recipe (options: resume, force, progress); see :func:`ppo_align.training.run.train`.

    Defined here rather than imported so that ``import ppo_align`` does not load torch or TRL.
    """
    from ppo_align.training.run import train as _train

    return _train(recipe, **options)


def evaluate(runs=None, **options):
    """Evaluate the reference and every checkpoint of a run; see :func:`ppo_align.evaluation.harness.evaluate`."""
    from ppo_align.evaluation.harness import evaluate as _evaluate

    return _evaluate(runs, **options)


def export(run, **options):
    """Export a run's checkpoint as a PEFT adapter (or merged model) with a model card; see
    :func:`ppo_align.exporting.export_run`."""
    from ppo_align.exporting import export_run

    return export_run(run, **options)


def load_results(path):
    """Load a run's ``eval/results.json``; see :func:`ppo_align.evaluation.results.load_results`."""
    from ppo_align.evaluation.results import load_results as _load

    return _load(path)


def report(runs, **options):
    """Write report.md and report.html for evaluated runs; see :func:`ppo_align.reporting.render.build_report`."""
    from ppo_align.reporting.render import build_report

    return build_report(list(runs) if isinstance(runs, (list, tuple)) else [runs], **options)


def plan(recipe, **options):
    """Estimate a recipe's PPO memory and whether it fits; see :func:`ppo_align.planning.plan_memory`."""
    from ppo_align.planning import plan_memory

    return plan_memory(recipe, **options)


def audit_reward(recipe, **options):
    """Score a recipe's reward on refusals and compliances of eval prompts and write runs/NAME/reward-audit.json
    (``ppo-align audit-reward``); see :func:`ppo_align.rewards.audit.audit_reward` for the options."""
    from ppo_align.rewards.audit import audit_reward as _audit
    from ppo_align.rewards.audit import write_audit

    result = _audit(recipe, **options)
    write_audit(result, recipe.run_dir)
    return result


def judge(path, judge="learned", *, token_env=None, **options):
    """Label a JSONL/CSV file of (prompt, response) rows and measure agreement with its gold labels where it has
    them (``ppo-align judge FILE``); ``judge`` and ``token_env`` name the judge as ``--judge`` and ``--token-env``
    do; see :func:`ppo_align.judges.agreement.label_file` for the options."""
    from ppo_align.evaluation.review import attach_key
    from ppo_align.judges import build_judge
    from ppo_align.judges.agreement import label_file

    result = label_file(path, build_judge(judge, token_env=token_env), **options)
    attach_key(result.rows, path)  # a review sheet's key says which rows are flips and which were sampled
    return result


def review_sheet(run, output=None, **options):
    """Write a blind labelling sheet of a run's flips and a sample (``ppo-align judge --review RUN``); see
    :func:`ppo_align.evaluation.review.review_sheet`."""
    from ppo_align.evaluation.review import review_sheet as _review

    return _review(run, output, **options)
