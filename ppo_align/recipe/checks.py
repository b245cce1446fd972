"""Pass 2 of loading a recipe: cross-field and resource rules that TRL or the model loader would only
hit minutes later (batch divisibility, context length, pad vs eos, files and packages that must exist).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
from pathlib import Path

from ppo_align import embedded
from ppo_align.data import read_data
from ppo_align.errors import UserError
from ppo_align.evalsets import evalset_name, load_evalset, shipped_evalsets
from ppo_align.models import model_dir_problems
from ppo_align.recipe.schema import PPO_ONLY, JudgeReward, ModelReward, Recipe, TrainedReward
from ppo_align.tracking import missing_packages

# --------------------------------------------------------------------------- pass 2 rules


def cross_field_problems(recipe: Recipe) -> list[str]:
    """Rules between fields that TRL enforces late (or not at all). No file or model access."""
    p = recipe.ppo
    problems = []
    rollout = recipe.rollout_batch_size
    if recipe.algorithm != "ppo":
        problems += _group_algorithm_problems(recipe)
    elif rollout % p.num_mini_batches:
        problems.append(
            f"ppo.num_mini_batches = {p.num_mini_batches}: the rollout batch (per_device_train_batch_size × "
            f"gradient_accumulation_steps = {rollout}) must split evenly into it; fix: use a divisor of {rollout}"
        )
    elif (rollout // p.num_mini_batches) % p.per_device_train_batch_size:
        problems.append(
            f"ppo.num_mini_batches = {p.num_mini_batches}: each mini-batch ({rollout // p.num_mini_batches}) must be "
            f"a whole number of micro-batches (per_device_train_batch_size = {p.per_device_train_batch_size}); "
            f"fix: make gradient_accumulation_steps a multiple of num_mini_batches"
        )
    if rollout % p.samples_per_prompt:
        problems.append(
            f"ppo.samples_per_prompt = {p.samples_per_prompt}: must divide the rollout batch ({rollout}) so every "
            f"prompt's samples land in the same batch; fix: use a divisor of {rollout}"
        )
    if p.total_episodes < rollout:
        problems.append(
            f"ppo.total_episodes = {p.total_episodes}: fewer than one rollout batch ({rollout}); fix: set it to at least {rollout}"
        )
    if recipe.algorithm == "ppo" and p.whiten_rewards and rollout // p.num_mini_batches < 8:
        problems.append(
            f"ppo.whiten_rewards = true: needs mini-batches of at least 8 responses, these have "
            f"{rollout // p.num_mini_batches}; fix: set whiten_rewards: false or use larger batches"
        )
    if recipe.algorithm == "ppo" and recipe.reward.normalize and p.local_rollout_forward_batch_size < rollout:
        # TRL scores a rollout in chunks of local_rollout_forward_batch_size, and the reward sees one chunk a call.
        problems.append(
            f"reward.normalize = true: scores are standardised per scoring chunk (ppo.local_rollout_forward_batch_size "
            f"= {p.local_rollout_forward_batch_size}), which is smaller than the rollout batch ({rollout}), so each "
            f"chunk would get its own mean and scale; fix: set ppo.local_rollout_forward_batch_size to {rollout}, or "
            "drop reward.normalize")
    if recipe.reference.mode == "warm-start" and recipe.warm_start is None:
        problems.append("reference.mode = 'warm-start': the recipe has no warm_start section; "
                        "fix: add one, or use mode: disabled-adapter")
    if recipe.reference.mode == "disabled-adapter" and recipe.warm_start is not None:
        # The disabled-adapter reference would be the raw base, not the warm-started model PPO starts from:
        # the KL brake would pull the policy back to behaviour the warm start removed.
        problems.append("reference.mode = 'disabled-adapter': with a warm_start the reference must be the warm-started "
                        "model, not the raw base; fix: drop reference.mode (or set it to warm-start)")
    m = recipe.monitor
    if (m.min_refusal or m.max_refusal) and not m.holdout:
        problems.append("monitor: min_refusal/max_refusal need held-out prompts to measure; fix: set monitor.holdout "
                        "(e.g. 32)")
    if p.save_steps > 0 and recipe.output.keep_checkpoints == 0:
        problems.append("output.keep_checkpoints = 0: nothing could be resumed or evaluated; fix: at least 1")
    return problems


def _group_algorithm_problems(recipe: Recipe) -> list[str]:
    """RLOO and GRPO: no value model, and advantages from each prompt's group of samples."""
    p, name = recipe.ppo, recipe.algorithm
    problems = []
    ppo_only = [f"ppo.{key}" for key in PPO_ONLY if key in p.model_fields_set]
    ppo_only += ["value"] if "value" in recipe.model_fields_set else []
    if ppo_only:
        problems.append(f"algorithm = {name!r}: {', '.join(ppo_only)} only apply to algorithm: ppo (there is no value "
                        f"model or mini-batch loop); fix: remove {'it' if len(ppo_only) == 1 else 'them'}, "
                        "or set algorithm: ppo")
    if p.samples_per_prompt < 2:
        problems.append(f"ppo.samples_per_prompt = {p.samples_per_prompt}: {name.upper()} compares each response with "
                        "the other samples of its prompt, so it needs at least 2; fix: set samples_per_prompt: 2 or more")
    return problems


def resource_problems(recipe: Recipe) -> list[str]:
    """Rules that read files or package metadata (never model weights)."""
    problems = []
    meta, model_problems = _model_metadata(recipe)
    problems += model_problems
    context = meta.get("max_position_embeddings")
    total = recipe.data.max_prompt_length + recipe.ppo.response_length
    if context and total > context:
        problems.append(
            f"data.max_prompt_length + ppo.response_length = {total}: exceeds the model's context of {context} "
            f"tokens; fix: shorten one of them"
        )
    eos, pad = meta.get("eos_token"), recipe.model.pad_token or meta.get("pad_token")
    if eos and pad and pad == eos:
        problems.append(
            f"model.pad_token = {pad!r}: equals the eos token, so TRL would mask every end-of-turn token in "
            f"chat prompts; fix: set model.pad_token to another token the tokenizer knows (e.g. '<|endoftext|>')"
        )
    if recipe.warm_start is not None:
        ws = recipe.warm_start
        problems += _data_file_problems(recipe, "warm_start.data", ws.data, {ws.prompt_field: "warm_start.prompt_field",
                                                                            ws.response_field: "warm_start.response_field"})
    balance = {recipe.data.balance_by: "data.balance_by"} if recipe.data.balance_by else {}
    problems += _data_file_problems(recipe, "data.prompts", recipe.data.prompts,
                                    {recipe.data.prompt_field: "data.prompt_field", **balance}, every_row=False)
    problems += _reward_problems(recipe)
    problems += _evalset_problems(recipe, "eval.sets", recipe.eval.sets)
    if isinstance(recipe.eval.limit, dict):
        shipped = shipped_evalsets()
        names = [evalset_name(s, shipped) for s in recipe.eval.sets]
        problems += [f"eval.limit names {name!r}, which is not in eval.sets ({', '.join(names)}); "
                     "fix: name a set the recipe evaluates (a file by its stem), or drop it" for name in recipe.eval.limit
                     if name not in names]
    problems += _evalset_problems(recipe, "audit.sets", recipe.audit.sets)  # `ppo-align audit-reward` uses them too
    problems += [f"output.report_to names {name}, which is not installed; fix: pip install {name}, or drop it from "
                 "output.report_to" for name in missing_packages(recipe.output.report_to)]
    return problems


def _data_file_problems(recipe: Recipe, key: str, value, columns: dict[str, str | None], *,
                        every_row: bool = True) -> list[str]:
    """A data file or dataset the recipe names: it reads as rows, and has text in the columns it needs.

    ``columns`` maps each needed column to the recipe key that names it (None: a fixed name). With ``every_row``
    each row needs them (training would stop on the first that lacks one); otherwise some row must (training skips
    the empty ones).
    """

    where = f"{key} = {value!r}" if isinstance(value, str) else key
    try:
        source = read_data(recipe, value, key)
    except UserError as exc:
        problem = exc.problems[0]
        return [problem if problem.startswith(key) else f"{where}: {problem}"]
    rows, problems = source.rows, []
    for column, names_it in columns.items():
        lacking = [line for line, row in rows if not (isinstance(row.get(column), str) and row[column].strip())]
        if len(lacking) == len(rows):
            found = sorted({k for _, row in rows for k in row})
            problems.append(f"{where}: no row has a text {column!r} column ({source.at(lacking[0])}"
                            f"{' and every other row' if len(lacking) > 1 else ''}; columns: {', '.join(found)}); "
                            f"fix: name the column {column!r}" + (f", or set {names_it}" if names_it else ""))
        elif lacking and every_row:
            shown = ", ".join(source.at(n) for n in lacking[:3])
            shown += f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
            problems.append(f"{where}: {len(lacking)} rows lack a text {column!r} ({shown}); "
                            "fix: fill them in or remove them")
    return problems


def _evalset_problems(recipe: Recipe, key: str, names: list[str]) -> list[str]:
    """Eval sets a recipe names: shipped ones by name, the user's files loaded and checked row by row."""

    shipped = shipped_evalsets()
    problems = []
    for i, entry in enumerate(names):
        if isinstance(entry, str) and entry in shipped:
            continue
        source = recipe.evalset_source(entry)
        where = f"{key}[{i}] = {entry!r}" if isinstance(entry, str) else f"{key}[{i}] ({entry.name})"
        if isinstance(source, str) and not Path(source).is_file():
            problems.append(f"{where}: neither a shipped set ({', '.join(shipped)}) nor a file; "
                            "fix: check the name or path")
            continue
        try:
            load_evalset(source)
        except UserError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
    return problems


def _model_metadata(recipe: Recipe) -> tuple[dict, list[str]]:
    """Context length and special tokens of the base model, read from small files only."""
    source = recipe.model.source
    if embedded.is_embedded_source(source):
        try:
            model = embedded.lookup(source)
            embedded.locate_gguf(model)
        except UserError as exc:
            return {}, [f"model.source = {source!r}: {exc}"]
        meta = {"max_position_embeddings": model.max_position_embeddings, "pad_token": model.pad_token}
        return meta | {"eos_token": model.eos_token}, []
    path = Path(source).expanduser()
    if path.is_dir():
        problems = model_dir_problems(path, trust_remote_code=recipe.model.trust_remote_code, chat=True)
        return _local_model_metadata(path), [f"model.source = {source!r}: {p}" for p in problems]
    if _looks_like_path(source):
        return {}, [f"model.source = {source!r}: no such directory; fix: check the path, or use embedded:{next(iter(embedded.EMBEDDED_MODELS))}"]
    return {}, []  # a hub id: checked when it is downloaded


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def _local_model_metadata(path: Path) -> dict:
    meta: dict = {}
    for name, keys in (("config.json", ("max_position_embeddings",)), ("tokenizer_config.json", ("eos_token", "pad_token"))):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        for key in keys:
            value = data.get(key)
            if isinstance(value, dict):  # older tokenizer configs store AddedToken dicts
                value = value.get("content")
            if value is not None:
                meta[key] = value
    return meta


def _reward_problems(recipe: Recipe) -> list[str]:
    reward = recipe.reward
    if isinstance(reward, ModelReward):
        path = recipe.resolve_path(reward.path)
        if not (path / "config.json").is_file():
            return [f"reward.path = {reward.path!r}: not a model directory (no config.json at {path}); fix: check the path"]
        return []
    if isinstance(reward, TrainedReward):
        return _data_file_problems(recipe, "reward.pairs", reward.pairs,
                                   {"prompt": None, "chosen": None, "rejected": None})
    if isinstance(reward, JudgeReward):
        return []  # build_judge checks the spec when training starts
    try:
        resolve_function(reward.function, recipe)
    except UserError as exc:
        return [f"reward.function = {reward.function!r}: {exc}"]
    return []


def resolve_function(spec: str, recipe: Recipe | None = None):
    """Import ``module:function`` or ``path/to/file.py:function`` and return the callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError("expected 'module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        path = recipe.resolve_path(module_name) if recipe else Path(module_name)
        if not path.is_file():
            raise UserError(f"no such file {path}; fix: check the path (relative to the recipe file)")
        spec_ = importlib.util.spec_from_file_location(f"ppo_align_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec_)
        try:
            spec_.loader.exec_module(module)
        except Exception as exc:  # user code: report, do not crash
            raise UserError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(f"cannot import {module_name!r} ({exc}); fix: install it or use a file path") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{module_name} has no function {attr!r}{hint}")
    return fn
