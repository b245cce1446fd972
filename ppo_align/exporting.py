"""Export a run's policy for use elsewhere: a standard PEFT adapter directory (or the adapter merged into a
full-precision copy of the base), with a model card that carries what the eval measured.

The card is the point: a behaviour adapter without its numbers invites the question the eval answered. It
holds the headline change from the reference with 95% intervals, the judge that labelled the responses and
its measured agreement on the gold test split beside the trivial baseline, the claim verdicts, the reference
the checkpoint was compared with, and the recipe. An export is written into a hidden directory and renamed
into place, so an interrupted export leaves the previous one (or none), never half of one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ppo_align import checkpoints, embedded, models
from ppo_align.errors import UserError
from ppo_align.recipe.load import load_recipe
from ppo_align.rundir import RunDir

log = logging.getLogger(__name__)

CARD = "README.md"


@dataclass
class Export:
    directory: Path
    checkpoint: str
    merged: bool
    evaluated: bool
    """Whether the eval results hold this checkpoint (the card has numbers only then)."""
    pushed_to: str | None = None


def export_run(run_dir: str | Path, output: str | Path | None = None, *, checkpoint: str | int = "best",
               merge: bool = False, push_to_hub: str | None = None, private: bool = False,
               token_env: str = "HF_TOKEN", hub_api=None) -> Export:
    """Write a run's checkpoint as a PEFT adapter directory (``merge``: a merged full-precision model) with a
    model card, and optionally upload it to the hub.

    Args:
        run_dir: a run directory written by `train`.
        output: where the export goes (default ``RUN/export``); an existing export there is replaced.
        checkpoint: "best" (the last one that passed the training-time behaviour rules, else the latest),
            "latest", or a PPO update number.
        merge: merge the adapter into the base loaded in full precision and save the whole model. The
            adapter was trained on a 4-bit base, so the merged model is close to, not identical with, the
            model the eval measured; the card says so.
        push_to_hub: a hub repository id (``user/name``) to create if needed and upload the export to.
        private: create that repository private.
        token_env: environment variable holding the hub token for the upload.
        hub_api: a ``huggingface_hub.HfApi``-like object (tests pass a local stand-in).
    """
    run_dir = Path(run_dir)
    if not RunDir(run_dir).recipe.is_file():
        raise UserError(f"{run_dir}: not a run directory (no recipe.yaml); fix: pass the directory `ppo-align train` "
                        "wrote, e.g. runs/<name>")
    token = None
    if push_to_hub is not None:
        if "/" not in push_to_hub:
            raise UserError(f"--push-to-hub {push_to_hub}: not a repository id; fix: give it as OWNER/NAME")
        token = os.environ.get(token_env)
        if hub_api is None and not token:
            raise UserError(f"--push-to-hub: no hub token in ${token_env}; fix: export {token_env}=<a write token> "
                            "(or name another variable with --token-env)")
    ckpt, why = _choose(run_dir, checkpoint)
    recipe = load_recipe(RunDir(run_dir).recipe, check_resources=False)
    out = Path(output) if output is not None else RunDir(run_dir).export
    if out.exists() and not _replaceable(out):
        raise UserError(f"--output {out}: exists and is not an earlier export (no ppo-align model card in it); fix: "
                        "choose a new directory, or remove that one yourself")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        adapter = ckpt.path / checkpoints.POLICY_DIR
        if merge:
            _merge(recipe, adapter, work)
        else:
            for file in adapter.iterdir():
                if file.is_file():
                    shutil.copy2(file, work / file.name)
            _point_at_base(work / "adapter_config.json", recipe.model.source)
            # The tokenizer as the policy was trained with it (the recipe's pad token included).
            models.load_tokenizer(recipe.model, models.resolve_model_dir(recipe.model.source)).save_pretrained(work)
        evaluated = _write_card(work / CARD, run_dir, recipe, ckpt.path.name, why, merge)
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        if out.exists():
            out.rename(old)  # the previous export stays whole until the new one is in place
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    result = Export(out, ckpt.path.name, merge, evaluated)
    if push_to_hub is not None:
        result.pushed_to = _push(out, push_to_hub, private, token, hub_api, run_dir.name)
    return result


def _replaceable(directory: Path) -> bool:
    """An empty directory, or one an earlier export wrote (its card names this tool)."""
    if not directory.is_dir():
        return False
    card = directory / CARD
    return not any(directory.iterdir()) or (card.is_file() and "ppo-align" in card.read_text(encoding="utf-8")[:500])


def _choose(run_dir: Path, which: str | int) -> tuple[checkpoints.Checkpoint, str]:
    complete = [c for c in checkpoints.find_checkpoints(run_dir) if c.complete]
    if not complete:
        raise UserError(f"{run_dir}: no complete checkpoint to export; fix: train the run first (`ppo-align train`)")
    if which == "best":
        best = checkpoints.best(run_dir)
        if best is not None:
            return best, "the run's best: the last checkpoint whose behaviour checks passed the training-time rules"
        return complete[-1], "the latest: no checkpoint passed the training-time behaviour rules"
    if which == "latest":
        return complete[-1], "the latest complete checkpoint"
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"--checkpoint {which}: not best, latest or an update number; fix: e.g. --checkpoint best "
                        "or --checkpoint 20") from None
    for c in complete:
        if c.step == step:
            return c, f"checkpoint {step}, as asked"
    raise UserError(f"--checkpoint {step}: {run_dir} has no complete checkpoint-{step} (complete: "
                    f"{', '.join(str(c.step) for c in complete)}); fix: pick one of those")


def _point_at_base(config_file: Path, source: str) -> None:
    """Name the base as the recipe did (a hub id, a directory, embedded:NAME), not as this machine's cache
    path the adapter was saved against."""
    import json

    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = source
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _merge(recipe, adapter: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = models.resolve_model_dir(recipe.model.source)
    base = AutoModelForCausalLM.from_pretrained(model_dir, revision=recipe.model.revision, dtype=torch.float32,
                                                trust_remote_code=recipe.model.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer = models.load_tokenizer(recipe.model, model_dir)  # as the policy was trained with it
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _base_description(source: str) -> str:
    if embedded.is_embedded_source(source):
        return f"`{source}`: {embedded.lookup(source).description}"
    return f"`{source}`"


def _reward_description(reward) -> str:
    if reward.source == "function":
        return f"the function `{reward.function}`" + (f" with {reward.kwargs}" if reward.kwargs else "")
    if reward.source == "judge":
        return f"the labels of the `{reward.judge}` judge turned into payoffs"
    if reward.source == "trained":
        return "a reward model trained here from preference pairs"
    return f"the reward model `{reward.path}`"


def _write_card(path: Path, run_dir: Path, recipe, checkpoint: str, why: str, merged: bool) -> bool:
    """The model card; returns whether it carries eval numbers for ``checkpoint``."""
    from ppo_align.evaluation.results import load_results
    from ppo_align.reporting.document import headline_table
    from ppo_align.reporting.render import markdown_table
    from ppo_align.reporting.runs import load_run

    source = recipe.model.source
    hub_base = not embedded.is_embedded_source(source) and not Path(source).expanduser().exists()
    front = ["---", "library_name: " + ("transformers" if merged else "peft"),
             *([f"base_model: {source}"] if hub_base else []),
             "tags: [ppo, rlhf, lora, ppo-align, trl]", "---", ""]
    reference = ("the warm-start adapter (supervised demonstrations) on the same 4-bit base"
                 if recipe.reference_mode == "warm-start" else "the base with the adapter disabled")
    lines = [f"# {run_dir.name}: {checkpoint}", "",
             f"A LoRA policy trained with PPO by ppo-align (recipe `{recipe.name}`) to change when the model refuses, "
             "hedges or complies.", "",
             f"- **Base**: {_base_description(source)}; the adapter was trained "
             + ("on its 4-bit NF4 quantization." if recipe.model.quantization.load_in_4bit else "in full precision."),
             f"- **Checkpoint**: `{checkpoint}`, {why}.",
             f"- **Reference** it is compared with: {reference}.",
             f"- **Reward**: {_reward_description(recipe.reward)}.",
             "- **This directory**: " + ("the adapter merged into the base loaded in full precision. The adapter was "
                                         "trained and evaluated on the 4-bit base, so this model is close to, not "
                                         "identical with, the one measured below." if merged else
                                         "a PEFT adapter (`PeftModel.from_pretrained(base, this_dir)`)."),
             *([f"- **Loading the base** elsewhere: `pip install ppo-align`, then `ppo_align.models.resolve_model_dir("
                f"\"{source}\")` gives the directory to load."] if embedded.is_embedded_source(source) else []), ""]
    evaluated = False
    results_file = RunDir(run_dir).eval / "results.json"
    if results_file.is_file() and checkpoint in load_results(results_file).targets:
        run = load_run(run_dir, target=checkpoint)
        evaluated = True
        lines += ["## What changed (reference → this checkpoint)", "",
                  "Paired on the same prompts; intervals are 95%. Over-refusal is refusing prompts that should be "
                  "answered, under-refusal answering prompts that should be refused.", ""]
        table = headline_table(run.results, checkpoint)
        lines += markdown_table(table.headers, table.rows) + [""]
        lines += ["## Claims, checked", ""] + [f"- **{c.verdict}** {c.name}: {c.evidence}" for c in run.claims()] + [""]
        lines += _judge_lines(run.results.data["judge"])
    else:
        lines += ["## What changed", "", f"Not measured: `ppo-align eval {run_dir}` has not evaluated {checkpoint}. "
                  "Run it, then export again, before trusting this adapter's behaviour.", ""]
    lines += ["## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    path.write_text("\n".join(front + lines), encoding="utf-8")
    return evaluated


def _judge_lines(judge: dict) -> list[str]:
    from ppo_align.reporting.document import judge_independence

    lines = ["## The judge", "", f"Responses were labelled comply / partial / refuse by `{judge['name']}@{judge['version']}`."]
    gold = (judge.get("gold") or {}).get("overall")
    if gold:
        lines.append(f"On {judge['gold']['set']} ({gold['n']} rows it never trained on) it agrees with the gold labels on "
                     f"{gold['binary']:.1%} of rows as refuse-or-partial vs comply (always answering the commonest "
                     f"label: {gold['baseline_binary']:.1%}) and {gold['three_way']:.1%} three-way; refusal recall "
                     f"{gold['refusal_recall']:.1%}.")
    elif judge.get("gold"):
        lines.append(f"Its agreement with gold labels was not measured ({judge['gold'].get('error', 'unknown')}).")
    independence = judge_independence(judge)
    return lines + ([independence] if independence else []) + [""]


def _push(directory: Path, repo_id: str, private: bool, token: str | None, hub_api, run_name: str) -> str:
    if hub_api is None:
        from huggingface_hub import HfApi

        hub_api = HfApi(token=token)
    try:
        url = hub_api.create_repo(repo_id, private=private, exist_ok=True)
        hub_api.upload_folder(folder_path=str(directory), repo_id=repo_id,
                              commit_message=f"ppo-align export of {run_name}")
    except Exception as exc:  # network, auth, permissions: one line, the export itself is kept
        raise UserError(f"--push-to-hub {repo_id}: the upload failed ({str(exc).splitlines()[0][:200]}); the export "
                        f"is kept in {directory}; fix: check the token and the repository, then export again") from None
    log.info("uploaded %s to %s", directory, url)
    return str(url)
