"""`ppo-align eval`: run the reference and every checkpoint on the eval sets and measure the shift.

The base model is loaded once; each target is the same loaded model with a
different LoRA adapter active (the reference: adapters disabled, or a run's frozen warm start). For every
target × eval set the harness generates responses, scores them teacher-forced,
and caches the per-prompt numbers under ``<run>/eval/cache/``, keyed by
everything that determines them: base weights and precision, adapter weights,
eval-set content, generation settings, system prompt and harness version. The
judge's labels are cached inside the same entry under the judge's name and
version, so changing the judge re-labels without re-generating. A re-run after
a new checkpoint appears computes only that checkpoint. ``results.json`` is
written atomically at the end; an interrupted eval keeps its finished cache
entries and leaves the previous results untouched.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterable

from ppo_align import inference, models
from ppo_align.chat import encode_chat
from ppo_align.errors import UserError
from ppo_align.evalsets import EvalItem, EvalSet, load_evalset
from ppo_align.evaluation.results import HEADLINE, EvalResults, assemble, save_results
from ppo_align.evaluation.targets import (
    COMPLIANCE_OPENERS,
    HARNESS_VERSION,
    REFUSAL_OPENERS,
    EvalJob,
    Target,
    check_writable,
    job_for_model,
    job_for_run,
)
from ppo_align.files import digest, write_json_atomic
from ppo_align.judges import build_judge
from ppo_align.judges.agreement import agreement, binary, gold_scorecards
from ppo_align.models import check_model_source, model_fingerprint
from ppo_align.processes import process_state
from ppo_align.recipe.schema import ModelSection
from ppo_align.rundir import EVAL_CACHE, RESULTS
from ppo_align.tracking import Trackers

log = logging.getLogger(__name__)

# How much of the reference's prompt encodings one eval set may keep for the checkpoints' KL passes (0: none).
REFERENCE_PROMPTS_BYTES = 2 << 30


def answer_matches(response: str, answers: list[str]) -> bool:
    """Whether a knowledge answer appears in the response: any accepted form, case-insensitive,
    as a whole word or phrase (so "12" does not match "120", nor "Rome" match "Romeo")."""
    text = " ".join(response.lower().split())
    return any(
        re.search(rf"(?<!\w){re.escape(' '.join(a.lower().split()))}(?!\w)", text) for a in answers if a.strip()
    )

# --------------------------------------------------------------------------- running


def evaluate(
    runs: str | Path | list[str | Path] | None = None,
    *,
    model: str | None = None,
    adapters: Iterable[str | Path] = (),
    reference_adapter: str | Path | None = None,
    system_prompt: str | None = None,
    output: str | Path | None = None,
    sets: list[str] | None = None,
    judge="learned",
    full_precision: bool = False,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    samples: int | None = None,
    seed: int | None = None,
    limit: int | None = None,
    progress: bool = True,
):
    """Evaluate the reference and every checkpoint of one or more runs (or a model and adapters).

    Args:
        runs: run directory (or a list of them) written by `train`.
        model: instead of runs: a model directory, embedded name or hub id, evaluated as the reference...
        adapters: ...and these PEFT adapter directories on top of it, one at a time.
        reference_adapter: with ``model``: the reference is the model with this adapter (e.g. the warm start the
            adapters were trained from), not the bare model.
        system_prompt: with ``model``: the system turn every prompt gets (a run uses its recipe's).
        output: where a `model` evaluation writes its ``results.json`` (default ``eval-<model name>``).
        sets: eval sets (shipped names or JSONL/CSV paths); default: the recipe's ``eval.sets``.
        judge: "learned" (default: trained on the project's gold labels, and not the default reward's judge),
            "rules", a local sequence-classification model directory, an HTTP endpoint URL, or a
            :class:`ppo_align.judges.Judge` object.
        full_precision: load the base in full precision even if the run trained it in 4-bit.
        max_new_tokens, batch_size, samples, seed, limit: override the recipe's eval settings.
        progress: show progress bars.

    Returns:
        :class:`EvalResults` (a list of them when several runs were given).
    """
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, samples=samples, seed=seed, limit=limit)
    if model is not None:
        if runs:
            raise UserError("pass either run directories or --model, not both; fix: drop one of them")
        jobs = [job_for_model(model, adapters, output=output, sets=sets, reference_adapter=reference_adapter,
                              system_prompt=system_prompt, **options)]
    else:
        if reference_adapter is not None or system_prompt is not None:
            raise UserError("--reference-adapter and --system-prompt go with --model (a run has its own); "
                            "fix: drop them, or evaluate with --model")
        if runs is None:
            raise UserError("nothing to evaluate; fix: pass a run directory (e.g. runs/<name>) or --model")
        many = isinstance(runs, (list, tuple))
        jobs = [job_for_run(r, sets=sets, **options) for r in (runs if many else [runs])]

    the_judge = build_judge(judge) if isinstance(judge, str) else judge
    models.reuse_freed_memory()
    results = [run_job(job, the_judge, full_precision=full_precision, progress=progress) for job in jobs]
    return results if model is None and isinstance(runs, (list, tuple)) else results[0]


def run_job(job: EvalJob, judge, *, full_precision: bool = False, progress: bool = True) -> EvalResults:
    """Evaluate every target of a job on every set (cached work is reused), then write ``results.json``."""

    evalsets = [load_evalset(name).limited(job.limit) for name in job.sets]
    for s in evalsets:
        if s.items and not isinstance(s.items[0], EvalItem):
            raise UserError(f"eval set {s.name!r} holds judged responses, not prompts; fix: use it with `ppo-align judge`")
    names = [s.name for s in evalsets]
    if len(set(names)) != len(names):
        raise UserError(f"eval sets {', '.join(names)}: two share a name (results are keyed by it); "
                        "fix: rename one of the files")
    section = job.model.model_copy(update={"quantization": job.model.quantization.model_copy(update={"load_in_4bit": False})}) \
        if full_precision else job.model

    # Everything that can be checked from files is, before a model is loaded or anything is written.
    check_model_source(section.source, "model.source" if job.run else "--model", trust_remote_code=section.trust_remote_code)
    check_writable(job.out_dir, "make it writable" if job.run else "pass a writable --output directory")

    base = {"source": section.source, "fingerprint": model_fingerprint(section.source, section.revision),
            "load_in_4bit": section.quantization.load_in_4bit}
    cache = Cache(job.out_dir / EVAL_CACHE)
    processes = process_state()
    computed_elsewhere: list[dict] = []
    load_seconds = None
    if processes.num_processes > 1:
        # Several processes (torchrun / accelerate launch): each computes its share of the (target, set)
        # units into the shared cache; the main process then assembles everything from the cache, so the
        # merged results are exactly what one process would have computed.
        session = _Session(job, section, base, cache, progress and processes.is_main_process)
        units = [(t, s) for t in job.targets for s in evalsets]
        try:
            for target, evalset in units[processes.process_index::processes.num_processes]:
                _labelled(session.entry(target, evalset), evalset, judge, cache)
        finally:
            session.close()
        from accelerate.utils import gather_object

        computed_elsewhere, load_seconds = gather_object(session.computed), session.load_seconds
        processes.wait_for_everyone()
    session = _Session(job, section, base, cache, progress)
    # The reward's own judge also labels every response when it is not the eval judge: how often the two agree,
    # checkpoint by checkpoint, shows PPO learning to please the reward's judge (they drift apart).
    reward_judge = job.reward_judge
    same = None if reward_judge is None else _key(reward_judge) == _key(judge)
    records: dict[str, dict[str, list[dict]]] = {target.name: {} for target in job.targets}
    try:
        # Set by set, the reference first: its prompt encodings are kept for the checkpoints' KL passes.
        for evalset in evalsets:
            session.reference_prompts = inference.ReferencePrompts(REFERENCE_PROMPTS_BYTES)
            for target in job.targets:
                entry = session.entry(target, evalset)
                records[target.name][evalset.name] = _labelled(entry, evalset, judge, cache)
                if same is False:
                    for record, theirs in zip(records[target.name][evalset.name],
                                              _labelled(entry, evalset, reward_judge, cache)):
                        record["reward_label"] = theirs["label"]
        session.reference_prompts = None
    finally:
        session.close()
    judge_info = {"name": judge.name, "version": judge.version,
                  # Whether the eval judge is the one the reward paid for (None: not known, e.g. `eval --model`).
                  "reward_judge": _key(reward_judge) if reward_judge else None, "same_as_reward": same,
                  "reward_agreement": _reward_agreement(records) if same is False else None}
    try:
        judge_info["gold"] = gold_scorecards(judge)
    except UserError as exc:  # e.g. an HTTP judge that is down: the results still stand, without the figure
        judge_info["gold"] = {"error": str(exc)}
    timing = {"model_load_seconds": session.load_seconds or load_seconds, "computed": computed_elsewhere + session.computed,
              "processes": processes.num_processes}
    results = assemble(job, base, evalsets, judge_info, records, timing)
    if processes.is_main_process:
        save_results(results, job.out_dir)
    processes.wait_for_everyone()
    evaluated = EvalResults(results, job.out_dir / RESULTS)
    if job.report_to and job.run and processes.is_main_process:
        _send_to_trackers(evaluated, job)
    return evaluated


def _send_to_trackers(results: EvalResults, job: EvalJob) -> None:
    """Each target's headline rates and changes from the reference at its PPO update, and the headline table
    of the latest checkpoint, to the run's trackers (``output.report_to``)."""
    trackers = Trackers(job.report_to, Path(job.run["dir"]), job.run["name"])
    reference = results.targets[0]
    try:
        values = {}
        for target in job.targets:
            values[target.name] = {}
            for evalset in results.data["evalsets"]:
                metrics = results.metric(target.name, evalset)
                shift = results.shift(target.name, evalset) if target.name != reference else {}
                for key, _, _ in HEADLINE:
                    if metrics.get(key) and metrics[key]["n"]:
                        values[target.name][f"eval/{evalset}/{key}"] = metrics[key]["rate"]
                        if shift.get(key):
                            values[target.name][f"eval/{evalset}/{key}_change"] = shift[key]["delta"]
            trackers.scalars(values[target.name], target.step or 0)
        latest = job.targets[-1]
        before, after = values[reference], values[latest.name]
        rows = [[*name.split("/")[1:], rate, after[name], after.get(f"{name}_change", 0.0)]
                for name, rate in before.items() if not name.endswith("_change")]
        trackers.table("eval/headline", ["set", "metric", reference, latest.name, "change"], rows, latest.step or 0)
    finally:
        trackers.close()


class _Session:
    """Loads the model lazily (not at all when everything is cached) and swaps adapters on it."""

    def __init__(self, job: EvalJob, section: ModelSection, base: dict, cache: "Cache", progress: bool):
        self.job, self.section, self.base, self.cache = job, section, base, cache
        self.model = self.tokenizer = None
        self.active: str | None = None
        self.computed: list[dict] = []
        """What was not in the cache: target, set and seconds taken (model loading excluded)."""
        self.load_seconds: float | None = None
        self.phase_seconds: dict[str, float] = {}
        self.reference_prompts: inference.ReferencePrompts | None = None
        """The reference's prompt encodings for the set being evaluated (see :class:`~ppo_align.inference.ReferencePrompts`)."""
        self._bar = None
        self._show_progress = progress

    def key(self, target: Target, evalset: EvalSet) -> dict:
        return {
            "harness": HARNESS_VERSION,
            "base": self.base,
            "adapter": target.fingerprint,
            "reference": self.job.targets[0].fingerprint,  # KL is measured against it
            "evalset": evalset.sha256,
            "generation": self.job.settings.to_dict(),
            "system_prompt": self.job.system_prompt,
        }

    def entry(self, target: Target, evalset: EvalSet) -> dict:
        key = self.key(target, evalset)
        entry = self.cache.get(key)
        if entry is None:
            start = time.perf_counter()
            entry = {"key": key, "records": self._compute(target, evalset), "labels": {}}
            self.cache.put(key, entry)
            seconds = round(time.perf_counter() - start, 2)
            self.computed.append({"target": target.name, "set": evalset.name, "seconds": seconds, **self.phase_seconds})
            log.info("%s · %s: %d prompts evaluated in %.0f s", target.name, evalset.name, len(evalset), seconds)
        else:
            log.info("%s · %s: from the cache", target.name, evalset.name)
        return entry

    def _load(self) -> None:
        model_dir = models.resolve_model_dir(self.section.source)
        self.tokenizer = models.load_tokenizer(self.section, model_dir, for_training=False)
        log.info("loading %s for evaluation (4-bit: %s)", self.section.source, self.section.quantization.load_in_4bit)
        start = time.perf_counter()
        self.model = models.load_for_inference(self.section, model_dir, self.tokenizer)
        if self.job.reference_adapter is not None:
            self.model = self._with_adapter(self.job.reference_adapter, models.REFERENCE_ADAPTER)
        # Every adapter goes on before the first forward. On CPUs with AVX512-BF16, bitsandbytes repacks
        # 4-bit weights at the first eval-mode forward, and an adapter PEFT loads after that produces
        # garbage (measured on the embedded model: nonsense text, KL ~7 nats/token; loaded before, exact).
        for target in self.job.targets:
            if target.adapter is not None:
                self.model = self._with_adapter(target.adapter, _adapter_name(target.name))
        self.load_seconds = round(time.perf_counter() - start, 2)

    def _activate(self, target: Target):
        """The loaded model with ``target``'s adapter active (all were loaded with the model)."""
        if self.model is None:
            self._load()
        if target.adapter is not None and self.active != target.name:
            self.model.set_adapter(_adapter_name(target.name))
            self.active = target.name
        return self.model

    def _with_adapter(self, path: Path, name: str):
        """The model with the adapter at ``path`` loaded as ``name`` and active."""
        from peft import PeftModel

        try:
            if not isinstance(self.model, PeftModel):
                with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; not the user's concern
                    warnings.simplefilter("ignore", FutureWarning)
                    model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            else:
                model = self.model
                model.load_adapter(str(path), adapter_name=name)
                model.set_adapter(name)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise UserError(f"{path}: cannot apply this adapter to {self.section.source} "
                            f"({str(exc).splitlines()[0][:200]}); fix: evaluate it with the base model it was trained on") from None
        return model.eval()

    def _compute(self, target: Target, evalset: EvalSet) -> list[dict]:
        model = self._activate(target)
        tok = self.tokenizer
        items: list[EvalItem] = evalset.items
        prompts = [encode_chat(tok, self._messages(item.prompt)) for item in items]
        settings = self.job.settings
        bar = self._progress(f"{target.name} · {evalset.name}", len(items))
        context = inference.reference_mode(model) if target.adapter is None else nullcontext()
        # Scored on each prompt's encoding during generation: refusal vs compliance openers (the margin) for
        # behaviour prompts, the first accepted answer (knowledge measured without sampling) for questions.
        openers = [tok(o, add_special_tokens=False)["input_ids"] for o in REFUSAL_OPENERS + COMPLIANCE_OPENERS]
        continuations = [openers if item.expected != "answer" else
                         [tok(item.answers[0], add_special_tokens=False)["input_ids"]] if item.answers else []
                         for item in items]
        clock = self.phase_seconds = {}
        with context, _timed(clock, "generate_and_score"):
            generated = inference.generate(model, tok, prompts, settings, score_responses=True,
                                           with_reference=target.adapter is not None, continuations=continuations,
                                           reference_prompts=self.reference_prompts, progress=bar)
        k = len(REFUSAL_OPENERS)
        records = []
        for i, item in enumerate(items):
            record = {
                "id": item.id, "category": item.category, "expected": item.expected, "prompt": item.prompt,
                "response": generated[i].text, "length": len(generated[i].response_ids),
                "entropy": generated[i].scored.entropy,
                "kl": generated[i].scored.kl if target.adapter is not None else 0.0,
                "margin": _margin(generated[i].continuation_logprobs, k) if item.expected != "answer" else None,
            }
            if item.contrast_id:
                record["contrast_id"] = item.contrast_id
            if item.expected == "answer":
                record["correct"] = answer_matches(generated[i].text, item.answers or [])
                record["answer_logprob"] = generated[i].continuation_logprobs[0] if item.answers else None
            if generated[i].samples:
                record["samples"] = generated[i].samples
            records.append(record)
        return records

    def _messages(self, prompt: str) -> list[dict]:
        system = [{"role": "system", "content": self.job.system_prompt}] if self.job.system_prompt else []
        return system + [{"role": "user", "content": prompt}]

    def _progress(self, label: str, total: int) -> Callable[[int], None] | None:
        if not self._show_progress:
            return None
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bar.start()
        task = self._bar.add_task(label, total=total)
        return lambda n: self._bar.advance(task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def _timed(clock: dict, name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        clock[f"{name}_seconds"] = round(time.perf_counter() - start, 2)


def _margin(opener_logprobs: list[float], refusal_openers: int) -> float:
    """log P(refusal opener) − log P(compliance opener), each kind's openers pooled by logsumexp."""
    return _logsumexp(opener_logprobs[:refusal_openers]) - _logsumexp(opener_logprobs[refusal_openers:])


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _key(judge) -> str:
    return f"{judge.name}@{judge.version}"


def _reward_agreement(records: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Per target: how often the reward's judge and the eval judge give a greedy response the same label."""
    out = {}
    for target, sets in records.items():
        rows = [r for rs in sets.values() for r in rs]
        if not rows:
            continue
        both = agreement([r["label"] for r in rows], [r["reward_label"] for r in rows])
        out[target] = {"n": both.n, "three_way": both.accuracy, "kappa": both.kappa,
                       "binary": sum(binary(r["label"]) == binary(r["reward_label"]) for r in rows) / len(rows)}
    return out


def _labelled(entry: dict, evalset: EvalSet, judge, cache: "Cache") -> list[dict]:
    """The entry's records with the judge's labels, labelling (and caching) what this judge has not seen."""
    judge_key = f"{judge.name}@{judge.version}"
    records = entry["records"]
    labels = entry["labels"].get(judge_key)
    if labels is None:
        prompts = [r["prompt"] for r in records]
        labels = {"greedy": judge.label(prompts, [r["response"] for r in records])}
        if any("samples" in r for r in records):
            flat_prompts = [r["prompt"] for r in records for _ in r.get("samples", [])]
            flat = judge.label(flat_prompts, [s for r in records for s in r.get("samples", [])])
            labels["samples"], start = [], 0
            for r in records:
                n = len(r.get("samples", []))
                labels["samples"].append(flat[start:start + n])
                start += n
        entry["labels"][judge_key] = labels
        cache.put(entry["key"], entry)
    out = []
    for i, r in enumerate(records):
        record = {k: v for k, v in r.items() if k not in ("samples", "prompt")}
        record["label"] = labels["greedy"][i]
        if "samples" in labels and labels["samples"][i]:
            sample_labels = labels["samples"][i]
            record["p_refuse"] = sum(lab == "refuse" for lab in sample_labels) / len(sample_labels)
        out.append(record)
    return out


# --------------------------------------------------------------------------- cache and results files


class Cache:
    """One JSON file per (target, eval set, settings) key, written atomically."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: dict) -> Path:
        name = digest(json.dumps(key, sort_keys=True)).hexdigest()[:24]
        return self.root / f"{name}.json"

    def get(self, key: dict) -> dict | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing, or unreadable: recompute rather than trust it
        return entry if entry.get("key") == key else None

    def put(self, key: dict, entry: dict) -> None:
        write_json_atomic(self._path(key), entry)


def _adapter_name(target: str) -> str:
    """The name PEFT holds a target's adapter under: PEFT names become module attribute names, so no dots or
    slashes (a target named `run-a/checkpoint-10/policy` stays readable in the results)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in target)
