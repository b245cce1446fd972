"""The `ppo-align` command line: thin wrappers over the Python API.

Each command parses its arguments, calls one API function and prints the
result. Input problems (:class:`UserError`) and file-system failures (disk full,
read-only output) print one line each on stderr and exit with code 2; tracebacks
appear only with ``--debug``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Typer parses the command line with its own copy of click; its usage errors are caught by class (typer is locked).
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperCommand, TyperGroup

from ppo_align import __version__, processes
from ppo_align.errors import Interrupted, UserError


class _SwitchHelp:
    """--help is a switch like the others (see _flag): without a metavar typer lists it as taking a ``<bool>``."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(_SwitchHelp, TyperGroup):
    pass


class _Command(_SwitchHelp, TyperCommand):
    pass


app = typer.Typer(
    name="ppo-align",
    cls=_Group,
    help=(
        "PPO for behaviour: train when a model refuses, hedges or complies, and measure what changed.\n\n"
        "Start with `ppo-align recipes` to list the shipped recipes, `ppo-align validate RECIPE` to check "
        "one, `ppo-align train RECIPE` to train it, then `ppo-align eval runs/NAME` to see what changed."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs re-wrap to the terminal; `code` renders as code
)
recipe_app = typer.Typer(cls=_Group, help="Inspect recipes.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(recipe_app, name="recipe")

out = Console()
err = Console(stderr=True)

SetOption = typer.Option(
    None,
    "--set",
    "-s",
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set ppo.learning_rate=1e-5 (repeatable; values are YAML).",
)


def _flag(*names: str, **kwargs):
    """An on/off switch. Typer would list it as taking a ``<bool>`` value; it takes none, so --help shows none."""
    return typer.Option(False, *names, metavar="", **kwargs)


def _version(value: bool) -> None:
    if value:
        out.print(f"ppo-align {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = _flag("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = _flag("--debug", help="Show full tracebacks and debug logs."),
    quiet: bool = _flag("--quiet", "-q", help="Only warnings and errors in the log."),
    verbose: bool = _flag("--verbose", "-v", help="Also the libraries' own output: their warnings, "
                                 "deprecation notices and weight-loading bars (hidden by default)."),
) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=debug)])
    library_level = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "httpx", "bitsandbytes"):
        logging.getLogger(name).setLevel(library_level)
    if not (verbose or debug):
        silence_libraries()


def silence_libraries() -> None:
    """Our progress bars and one line per stage, not the libraries' chatter: their warnings about their own
    internals (deprecations, the bitsandbytes CPU kernel, pin_memory without a GPU) and a weight-loading bar per
    model load. Set through the environment too, so processes launched for multi-process training inherit it."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' and datasets' bars follow it
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning,
                            module=r"(torch|transformers|trl|peft|accelerate|bitsandbytes|datasets)(\.|$)")


@app.command(cls=_Command)
def validate(
    recipes: List[Path] = typer.Argument(..., help="Recipe YAML files (or names of shipped recipes)."),
    overrides: Optional[List[str]] = SetOption,
) -> None:
    """Check recipes without running them: types, ranges, unknown keys, batch sizes, files, model metadata.

    Every problem is listed, one per line. Exit code 0 when all are valid, 2 otherwise.
    Example: `ppo-align validate recipes/*.yaml --set ppo.learning_rate=1e-5`.
    """
    from ppo_align.recipe.load import load_recipe

    problems: list[str] = []
    for path in recipes:
        try:
            load_recipe(path, overrides)
            out.print(f"[green]ok[/green] {path}")
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(*problems)


@app.command("recipes", cls=_Command)
def list_recipes() -> None:
    """List the recipes shipped with ppo-align, with one-line descriptions."""
    from ppo_align.recipe.load import shipped_recipes

    if not out.is_terminal:  # data for a pipe: whole names, one tab-separated line each, never cut to a width
        for r in shipped_recipes():
            sys.stdout.write(f"{r.name}\t{r.description}\t{r.path}\n")
        return
    table = Table("name", "description", "file", box=None)
    for r in shipped_recipes():
        table.add_row(r.name, r.description, str(r.path))
    out.print(table)


@recipe_app.command("show", cls=_Command)
def recipe_show(
    recipe: Path = typer.Argument(..., help="Recipe YAML file or shipped recipe name."),
    overrides: Optional[List[str]] = SetOption,
) -> None:
    """Print the fully resolved recipe, every default filled in."""
    from ppo_align.recipe.load import load_recipe

    # Written as it is: rich would wrap long lines at the terminal's width and break the YAML (`> my.yaml`).
    sys.stdout.write(load_recipe(recipe, overrides, check_resources=False).to_yaml())


@app.command(cls=_Command)
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file or shipped recipe name."),
    overrides: Optional[List[str]] = SetOption,
    resume: bool = _flag("--resume", help="Require an existing run to continue from."),
    fresh: bool = _flag("--fresh", help="Start over: delete the run's checkpoints first."),
    force: bool = _flag("--force", help="Reuse a run directory made by a different recipe."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Data-parallel PPO in this many processes (accelerate launch on GPUs, torchrun on CPU)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Another seed for the whole run (warm start, prompt order, sampling, initialisation): sets ppo.seed and, unless output.name is set, names the run NAME-seedN."),
) -> None:
    """Train: warm start and reward model (if the recipe has them), reward audit, then PPO (or RLOO / GRPO).

    PPO runs a 4-bit LoRA policy against a frozen reference (the warm start, or the base with the
    adapter disabled) and a LoRA value model, with behaviour checks on held-out training prompts.
    `algorithm: rloo` or `grpo` in the recipe trains the same policy against the same reference with TRL's
    RLOO or GRPO trainer instead: no value model, each response scored against its prompt's other samples.
    Writes runs/NAME/ (recipe.yaml, run.json, metrics.jsonl, samples.jsonl, monitor.jsonl,
    reward-audit.json, warm-start/, reward-model/, checkpoint-N/).
    Re-running on an existing run continues from its latest complete checkpoint; raise
    ppo.total_episodes to train a finished run further.

    Examples: `ppo-align train smollm2-refusal-boundary --set ppo.total_episodes=64`,
    `ppo-align train my-recipe.yaml --fresh`, `ppo-align train smollm2-refusal-boundary --seed 1` (a second seed,
    in runs/smollm2-refusal-boundary-seed1).
    """
    from ppo_align import train as run_training
    from ppo_align.recipe.load import load_recipe

    overrides = list(overrides or []) + (seed_overrides(recipe, overrides, seed) if seed is not None else [])
    if resume and fresh:
        raise UserError("--resume and --fresh contradict each other; fix: pass one of them")
    if num_processes > 1:
        algorithm = load_recipe(recipe, overrides, check_resources=False).algorithm
        if algorithm != "ppo":  # refused before any process starts (train() refuses a launch from elsewhere too)
            raise UserError(f"--num-processes {num_processes}: algorithm = {algorithm!r} trains in one process so far "
                            "(several are supported for PPO only); fix: drop --num-processes, or use algorithm: ppo")
        raise typer.Exit(processes.relaunch_in_processes(num_processes, sys.argv[1:]))
    mode = "resume" if resume else "fresh" if fresh else "auto"
    result = run_training(load_recipe(recipe, overrides), resume=mode, force=force)
    if processes.is_worker_process():
        return
    if result.stopped_by:
        out.print(f"[yellow]{result.stopped_by}[/yellow]")
    out.print(f"[green]done[/green]: {result.dir}" + (f" (best checkpoint by the monitor rules: {result.best.name})"
                                                      if result.best else ""))


def seed_overrides(recipe: Path, overrides: list[str] | None, seed: int) -> list[str]:
    """``--seed N`` as recipe overrides: ppo.seed, and a run name of its own so seeds never share a run directory."""
    from ppo_align.recipe.load import load_recipe

    loaded = load_recipe(recipe, overrides, check_resources=False)
    named = loaded.output.name is not None
    return [f"ppo.seed={seed}"] + ([] if named else [f"output.name={loaded.name}-seed{seed}"])


@app.command("plan", cls=_Command)
def plan_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file or shipped recipe name."),
    overrides: Optional[List[str]] = SetOption,
    memory: Optional[str] = typer.Option(None, "--memory", metavar="SIZE", help="Memory it must fit, e.g. 24GiB (default: this machine's GPU memory, else its RAM)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when a GPU is present)."),
) -> None:
    """Estimate the RL stage's peak memory from the model config alone, and whether it fits.

    Prints each component (4-bit bases, LoRA with its optimizer state, activations of the larger of the
    rollout and optimisation peaks, runtime) and a verdict. Nothing is loaded but the model's config.
    Exit code 1 when it does not fit. On CPU the estimate has run about a third below the measured
    peak resident memory (see benchmarks/ppo_memory.py): leave that headroom.

    Example: `ppo-align plan smollm2-refusal-boundary --memory 8GiB --set ppo.per_device_train_batch_size=8`.
    """
    from ppo_align.planning import parse_memory, plan_memory
    from ppo_align.recipe.load import load_recipe

    if device not in (None, "cpu", "cuda"):
        raise UserError(f"--device {device!r}: unknown; fix: use cpu or cuda")
    loaded = load_recipe(recipe, overrides, check_resources=False)
    memory_plan = plan_memory(loaded, available=parse_memory(memory) if memory else None, device=device)
    out.print(memory_plan.table())
    out.print(memory_plan.verdict())
    if memory_plan.exit_code:
        raise typer.Exit(memory_plan.exit_code)


@app.command("audit-reward", cls=_Command)
def audit_reward_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file or shipped recipe name."),
    overrides: Optional[List[str]] = SetOption,
    evalsets: Optional[List[str]] = typer.Option(None, "--evalset", "-e", help="Eval set to audit on (repeatable; default: the recipe's audit.sets)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many prompts per set (default: the recipe's audit.limit)."),
    reference_answers: int = typer.Option(0, "--reference-answers", help="Also answer this many prompts per set with the reference and check the reward ranks judged-right answers above judged-wrong ones."),
) -> None:
    """Check the reward before spending PPO compute on it.

    Scores the recipe's reward on a pool of refusals and helpful openings in varied styles (apology,
    deflection, redirect, change of subject; bare, under a safety note, numbered steps) on eval prompts
    and prints, per set and category, how often it prefers what each prompt's label asks for, and per
    response how often it pays it like its own label (a reward that pays "You can't." as compliance
    teaches deflection). A trained reward model is trained first (or reused from the run). Writes runs/NAME/reward-audit.json.
    Exit code 1 when a set falls below the recipe's audit.min_accuracy.

    Example: `ppo-align audit-reward smollm2-refusal-boundary --limit 32`.
    """
    from ppo_align import audit_reward
    from ppo_align.recipe.load import load_recipe
    from ppo_align.rundir import RunDir

    loaded = load_recipe(recipe, overrides)
    result = audit_reward(loaded, sets=evalsets or None, limit=limit or loaded.audit.limit,
                          reference_answers=reference_answers)
    out.print(result.table())
    out.print(result.style_table())
    for row in result.reference:
        ranked = row["ranks_right_above_wrong"]
        out.print(f"reference answers, {row['set']} expected={row['expected']}: {row['right_answers']} right, "
                  f"{row['wrong_answers']} wrong; reward ranks right above wrong "
                  + (f"{ranked:.0%} of pairs" if ranked is not None else "(no pairs to rank)"))
    out.print(f"written: {RunDir(loaded.run_dir).reward_audit}")
    if not result.passed(loaded.audit.min_accuracy):
        out.print(f"[red]below audit.min_accuracy ({loaded.audit.min_accuracy:.0%}) on {result.worst['set']}[/red]")
        raise typer.Exit(1)


@app.command("eval", cls=_Command)
def eval_command(
    runs: Optional[List[Path]] = typer.Argument(None, help="Run directories written by `ppo-align train` (runs/NAME)."),
    model: Optional[str] = typer.Option(None, "--model", help="Evaluate this model (directory, embedded:NAME or hub id) instead of a run."),
    adapters: Optional[List[Path]] = typer.Option(None, "--adapter", help="With --model: a PEFT adapter directory to evaluate on it (repeatable)."),
    reference_adapter: Optional[Path] = typer.Option(None, "--reference-adapter", help="With --model: the reference is the model with this adapter (e.g. the warm start your adapters were trained from), not the bare model."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="With --model: a system turn before every eval prompt (a run uses its recipe's)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With --model: where results.json goes (default ./eval-MODEL)."),
    sets: Optional[List[str]] = typer.Option(None, "--evalset", "-e", help="Eval set name or JSONL/CSV file (repeatable; default: the recipe's eval.sets)."),
    judge: str = typer.Option("learned", "--judge", help="Behaviour judge: learned (default; trained on the project's gold labels, independent of the default reward), rules, a local classifier model directory, an http(s) URL, or chat:MODEL@URL (an LLM behind an OpenAI-compatible endpoint)."),
    samples: Optional[int] = typer.Option(None, "--samples", min=0, help="Sampled responses per prompt besides the greedy one: per-prompt P(refuse)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Tokens generated per response (default: the recipe's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Prompts per generation batch (default: the recipe's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of sampled decoding."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="At most this many prompts per set (categories in turn, contrast pairs kept together)."),
    full_precision: bool = _flag("--full-precision", help="Load the base unquantized even if training used 4-bit."),
    token_env: Optional[str] = typer.Option(None, "--token-env", metavar="VAR", help="With an http(s) or chat judge: environment variable holding its bearer token."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Share the (checkpoint, eval set) work among this many processes (GPUs if present, else CPU)."),
) -> None:
    """Measure how behaviour shifted: the reference (warm start, or adapters off) and every checkpoint on the eval sets.

    Reports refusal, over-refusal (refusing safe prompts), under-refusal, hedging, KL to the
    reference, knowledge exact match, and per-prompt flips with 95% intervals and exact McNemar
    tests against the reference. Work is cached in runs/NAME/eval/cache, so re-running after
    more training evaluates only the new checkpoints; results go to runs/NAME/eval/results.json.

    Examples: `ppo-align eval runs/smollm2-refusal-boundary`,
    `ppo-align eval runs/a runs/b --samples 4`,
    `ppo-align eval --model embedded:smollm2-135m-instruct --adapter my-lora/ --evalset boundary`,
    `ppo-align eval --model ./base --reference-adapter sft-lora/ --adapter ppo-lora/ --system-prompt "Be brief."`.
    """
    from ppo_align import evaluate
    from ppo_align.judges import build_judge

    if num_processes > 1:
        raise typer.Exit(processes.relaunch_in_processes(num_processes, sys.argv[1:]))
    results = evaluate(list(runs) if runs else None, model=model, adapters=adapters or (), output=output,
                       reference_adapter=reference_adapter, system_prompt=system_prompt,
                       sets=sets or None, judge=build_judge(judge, token_env=token_env), full_precision=full_precision, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, samples=samples, seed=seed, limit=limit,
                       progress=sys.stderr.isatty())
    if processes.is_worker_process():
        return
    for result in results if isinstance(results, list) else [results]:
        for skipped in result.data["skipped"]:  # warnings about the inputs: stderr, apart from the results
            err.print(f"[yellow]skipped[/yellow] {skipped['path']}: {escape(skipped['reason'])}", soft_wrap=True)
        out.print(result.summary())


@app.command("report", cls=_Command)
def report_command(
    runs: List[Path] = typer.Argument(..., help="Evaluated run directories (runs/NAME), or eval directories / results.json files."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where report.md, report.html and plots/ go (default: RUN/report, or ./report-A-vs-B for several runs)."),
    target: Optional[str] = typer.Option(None, "--target", help="Checkpoint to report against the reference (default: the run's best by its training-time rules, else the latest)."),
) -> None:
    """Explain a run: report.md and a self-contained report.html (plots inlined, opens from disk).

    Reads only files (eval/results.json, metrics.jsonl, monitor.jsonl, run.json): the headline shift
    with 95% intervals, the method's claims checked with numbers (knowledge unchanged, largest shift on
    boundary prompts, KL within budget, harmful refusal held), figures (behaviour and knowledge vs step,
    shift by category, reward vs KL, reward vs judged behaviour, training curves) and a filterable
    browser of the prompts that flipped. Several runs give a side-by-side comparison.

    Examples: `ppo-align report runs/smollm2-refusal-boundary`,
    `ppo-align report runs/a runs/b -o compare/`, `ppo-align report runs/a --target checkpoint-8`.
    """
    from ppo_align import report

    built = report(runs, output=output, target=target)
    out.print(built.headline())
    for run in built.runs:
        for claim in run.claims():
            colour = {"pass": "green", "fail": "red"}.get(claim.verdict, "dim")
            out.print(f"[{colour}]{claim.verdict.upper():>4}[/{colour}] {run.name}: {claim.name} — {claim.evidence}",
                      highlight=False)
    out.print(f"[green]done[/green]: {built.html} (and {built.markdown.name}, plots/)")


@app.command("export", cls=_Command)
def export_command(
    run: Path = typer.Argument(..., help="Run directory written by `ppo-align train` (runs/NAME)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (the last that passed the training-time behaviour rules, else the latest), latest, or an update number."),
    merge: bool = _flag("--merge", help="Merge the adapter into the base loaded in full precision and save the whole model."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where the export goes (default runs/NAME/export; an old export there is replaced)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="OWNER/NAME", help="Also upload the export to this hub repository (created if missing)."),
    private: bool = _flag("--private", help="With --push-to-hub: create the repository private."),
    token_env: str = typer.Option("HF_TOKEN", "--token-env", metavar="VAR", help="With --push-to-hub: environment variable holding a write token."),
) -> None:
    """Export a checkpoint for use elsewhere: a PEFT adapter directory (or, with --merge, a merged model)
    with a model card.

    The card carries the eval headline (reference → checkpoint, with 95% intervals), the claims, the judge
    and its measured agreement on gold labels, the reference it was compared with, and the recipe. Evaluate
    the run first (`ppo-align eval`); a checkpoint the eval has not measured is exported with a card that
    says so.

    Examples: `ppo-align export runs/smollm2-refusal-boundary`,
    `ppo-align export runs/NAME --checkpoint 20 --merge -o my-model/`,
    `ppo-align export runs/NAME --push-to-hub me/smollm2-boundary --private`.
    """
    from ppo_align import export

    done = export(run, output=output, checkpoint=checkpoint, merge=merge, push_to_hub=push_to_hub, private=private,
                  token_env=token_env)
    if not done.evaluated:
        err.print(f"[yellow]warning[/yellow]: {done.checkpoint} has no eval results; the model card says it is not "
                  f"measured (run `ppo-align eval {run}` and export again)", soft_wrap=True)
    what = "a merged model" if done.merged else "an adapter"
    out.print(f"[green]exported[/green] {done.checkpoint} as {what}: {done.directory}"
              + (f" and {done.pushed_to}" if done.pushed_to else ""))


@app.command("judge", cls=_Command)
def judge_command(
    file: Optional[Path] = typer.Argument(None, help="JSONL, CSV or TSV file with a prompt and a response per row."),
    judge: str = typer.Option("learned", "--judge", "-j", help="learned (default, the eval's judge), rules, a local classifier model directory, an http(s) URL, or chat:MODEL@URL (an LLM behind an OpenAI-compatible endpoint)."),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="Column holding the prompt."),
    response_field: str = typer.Option("response", "--response-field", help="Column holding the response."),
    label_field: Optional[str] = typer.Option(None, "--label-field", help="Column of gold labels (comply/partial/refuse; blank = not labelled yet). Default: `label`, used when the file has it; a column named here must exist."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the rows with an added judge_label column here (JSONL); with --review, where the sheet goes (CSV)."),
    token_env: Optional[str] = typer.Option(None, "--token-env", metavar="VAR", help="With an http(s) or chat judge: environment variable holding its bearer token."),
    review: Optional[Path] = typer.Option(None, "--review", metavar="RUN", help="Instead: write a labelling sheet of this evaluated run's own responses (every flip + a random sample) to label by hand."),
    sample: int = typer.Option(50, "--sample", min=0, help="With --review: how many responses besides the flips."),
) -> None:
    """Label (prompt, response) rows as comply, partial or refuse, and measure a judge on your own data.

    With gold labels in the file (--label-field, default `label`) it prints the judge's agreement,
    Cohen's kappa and the confusion matrix, then the figures the README quotes for the shipped judges
    (binary, refusal recall, three-way, each beside a judge that always gives one label): check a judge
    there before trusting its eval numbers. Rows with a blank label are left out (a sheet labelled part
    of the way can be checked as you go).

    Before trusting a run's headline, check the judge on that run's own outputs: `ppo-align judge --review
    runs/NAME` writes runs/NAME/eval/review.csv (or -o), blind: shuffled, with which model wrote each response
    kept in review.key.csv beside it; fill its label column by the guide in evalsets/LABELS.md, then
    `ppo-align judge runs/NAME/eval/review.csv` (flip and sampled rows reported apart).

    Examples: `ppo-align judge my-gold.jsonl` (the learned judge against your labels),
    `ppo-align judge outputs.csv --response-field completion -o labeled.jsonl`,
    `ppo-align judge my-gold.jsonl --judge ./my-classifier`,
    `ppo-align judge my-gold.jsonl --judge https://judge.example.com/label --token-env JUDGE_TOKEN`,
    `ppo-align judge my-gold.jsonl --judge chat:qwen2.5-7b-instruct@http://localhost:8000/v1`.
    """
    from ppo_align import judge as judge_file

    if review is not None and file is not None:
        raise UserError(f"ppo-align judge: both FILE ({file}) and --review; fix: pass FILE to measure the judge on "
                        "labelled rows, or --review RUN to write a new sheet, not both")
    if review is not None:
        from ppo_align import review_sheet
        from ppo_align.evaluation.review import key_path

        path, flipped, sampled = review_sheet(review, output, sample=sample)
        out.print(f"[green]wrote[/green] {path}: {flipped} responses whose refusal flipped and {sampled} sampled, "
                  f"shuffled, with which model wrote each kept apart in {key_path(path).name} (do not read it while "
                  f"labelling); fill the label column (comply / partial / refuse, by evalsets/LABELS.md), then "
                  f"`ppo-align judge {path}`", highlight=False)
        return
    if file is None:
        raise UserError("ppo-align judge: no FILE; fix: name a JSONL/CSV file of prompts and responses, "
                        "or write one from a run with --review RUN")
    gold_column = label_field or "label"
    result = judge_file(file, judge, token_env=token_env, prompt_field=prompt_field, response_field=response_field,
                        label_field=gold_column, require_labels=label_field is not None)
    counts = ", ".join(f"{label} {n}" for label, n in result.counts().items())
    out.print(f"{len(result.labels)} rows of {file} labelled by {result.judge}: {counts}", highlight=False)
    if result.gold:
        out.print(result.agreement.table())
        out.print(result.scorecard.line(), highlight=False)
        # A review sheet: its flips are where the judge's mistakes would move the headline.
        if any("why" in row for row in result.rows):
            for why, card in result.scorecards_by("why").items():
                out.print(f"  {why} rows: {card.line()}", highlight=False)
        if result.unlabelled:
            out.print(f"{result.unlabelled} rows with a blank {gold_column!r} are not labelled yet and were left out",
                      highlight=False)
    elif result.unlabelled:
        out.print(f"every {gold_column!r} cell is blank, so no agreement yet: label the rows by evalsets/LABELS.md "
                  "(comply / partial / refuse), then run this again", highlight=False)
    else:
        out.print(f"no {gold_column!r} column of gold labels, so no agreement to report", highlight=False)
    if output is not None:
        out.print(f"[green]wrote[/green] {result.write_jsonl(output)}", highlight=False)


def main() -> None:
    """Console entry point: turns UserError (one line per problem) and file-system errors (a full disk, a read-only
    output) into exit code 2."""
    # Accept --debug anywhere on the line (users append it after a failure), not only before the command.
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    try:
        # Not standalone: click's usage errors reach the handler below as one line, not typer's boxed panel.
        code = app(standalone_mode=False)
    except NoArgsIsHelpError:
        sys.exit(2)  # the help is already printed
    except ClickException as exc:  # a usage error: an unknown option, a bad value, a missing argument
        if debug:
            raise
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "ppo-align"
        message = " ".join(exc.format_message().split()).rstrip(".")
        err.print(f"[bold red]error:[/bold red] {escape(command)}: {escape(message)}; fix: see `{escape(command)} --help`",
                  highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except UserError as exc:
        if debug:
            raise
        for line in exc.problems:
            err.print(f"[bold red]error:[/bold red] {escape(line)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if debug:
            raise
        fix = _FILE_ERROR_FIXES.get(exc.errno)
        if fix is None:  # not a file-system problem (e.g. a network error)
            _generic_failure(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[bold red]error:[/bold red] {escape(where + (exc.strerror or str(exc)))}; fix: {escape(fix)}",
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    except _Interrupt as exc:
        if isinstance(exc.interrupt, Interrupted):  # training saved the update in progress before stopping
            err.print(escape(str(exc.interrupt)), highlight=False, soft_wrap=True)
            sys.exit(exc.interrupt.exit_code)
        err.print("interrupted; finished work is kept (complete checkpoints, cached evaluations): re-run the command to continue",
                  highlight=False, soft_wrap=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an environment failure: say what, keep the traceback for --debug
        if debug:
            raise
        _generic_failure(exc)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code) comes back as the return value


# File-system failures (a full disk, a read-only or missing place) are the user's to fix, not bugs: exit 2 with a fix.
# Writes are atomic, so the previous files are intact whenever one of these stops a command.
_FILE_ERROR_FIXES = {
    errno.ENOSPC: "free some disk space and re-run; finished work and the previous files are kept",
    errno.EDQUOT: "free some space within your disk quota and re-run; finished work and the previous files are kept",
    errno.EFBIG: "write to a file system that allows larger files",
    errno.EACCES: "make that place writable, or write somewhere else (e.g. --output DIR)",
    errno.EPERM: "make that place writable, or write somewhere else (e.g. --output DIR)",
    errno.EROFS: "write somewhere else (e.g. --output DIR): that file system is read-only",
    errno.ENOTDIR: "a part of that path is a file, not a directory; choose another path",
    errno.EISDIR: "that path is a directory; name a file",
    errno.EEXIST: "something already exists at that path; choose another path or move it away",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


class _Interrupt(Exception):
    """Carries Ctrl-C past typer, which would otherwise turn it into a silent exit 130."""

    def __init__(self, interrupt: KeyboardInterrupt):
        super().__init__(str(interrupt))
        self.interrupt = interrupt


def _report_interrupts(command):
    @functools.wraps(command)  # typer reads the parameters through __wrapped__
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as interrupt:
            raise _Interrupt(interrupt) from interrupt

    return run


for _command in (*app.registered_commands, *recipe_app.registered_commands):
    _command.callback = _report_interrupts(_command.callback)


def _generic_failure(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(type(exc).__name__ + ': ' + str(exc))} (re-run with --debug for the traceback)",
              highlight=False, soft_wrap=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
