"""RLOO and GRPO runs: TRL's group-baseline trainers with this tool's run directory around them.

Both trainers are transformers Trainers that sample ``ppo.samples_per_prompt`` responses per prompt and
score each against the others of its group, so there is no value model. This module holds what the two
share; :mod:`~ppo_align.training.rloo` and :mod:`~ppo_align.training.grpo` each import their trainer, mix
:class:`RunTrainer` into it and build its config. Over TRL's trainers we add:

* the same prompts, token for token, as PPO (the rollout's prompt ids come from the prompt set, not
  from re-rendering the chat template) and every reward source, with NaN/inf caught before TRL would
  quietly zero it;
* a resumable prompt order that keeps each prompt's group in one rollout batch and deals a fresh,
  seeded order every epoch (TRL's sampler restarts its order in a resumed process);
* checkpoints in the run directory's layout (``policy/`` and ``state/``, no ``value/``), written
  atomically, and resume from them through the Trainer's own resume path;
* metrics.jsonl / samples.jsonl, the behaviour monitor and its stop rule, the KL budget, and Ctrl-C /
  SIGTERM saving, as for PPO.

The reference: TRL copies the policy's "default" adapter into a frozen "ref" adapter when it is built, and
runs reference passes under it. The policy starts as the warm start (or as a fresh adapter, whose copy
equals the base), so "ref" is the same anchor the PPO path uses.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ppo_align import checkpoints, inference, models, tracking
from ppo_align.chat import left_pad
from ppo_align.errors import UserError
from ppo_align.recipe.schema import Recipe
from ppo_align.rewards.sources import RewardBatch, Scorer
from ppo_align.training.loop import (
    GroupedSampler,
    OnlineRun,
    UpdateClock,
    check_finite,
    require_one_batch,
)
from ppo_align.training.monitor import Monitor
from ppo_align.training.prompts import PromptSet

log = logging.getLogger(__name__)

REF_ADAPTER = "ref"
"""The frozen copy of the starting adapter that TRL's RLOO and GRPO trainers use as the reference."""

# TRL's names for the values we log, mapped to ours (metrics.jsonl keys). KL is converted to per response below.
METRIC_NAMES = {
    "reward": "reward_mean",
    "entropy": "entropy",
    "loss": "policy_loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "completions/mean_length": "response_tokens_mean",
    "frac_reward_zero_std": "groups_without_signal",
}


def common_config(recipe: Recipe, run_dir: Path) -> dict:
    """The keyword arguments GRPOConfig and RLOOConfig share, from the recipe."""
    p = recipe.ppo
    return dict(
        output_dir=str(run_dir),
        learning_rate=p.learning_rate,
        per_device_train_batch_size=p.per_device_train_batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        # One generation per optimizer step: the rollout batch is the step's batch, as in PPO.
        steps_per_generation=p.gradient_accumulation_steps,
        num_iterations=1,
        num_generations=p.samples_per_prompt,
        max_steps=math.ceil(p.total_episodes / recipe.rollout_batch_size),
        max_completion_length=p.response_length,
        temperature=p.temperature,
        top_p=1.0,
        beta=p.kl_coef,  # TRL's default is 0 for GRPO: no reference, no brake
        lr_scheduler_type=p.lr_scheduler_type,
        warmup_steps=p.warmup_steps,
        seed=p.seed,
        **models.trainer_precision(recipe.model),
        **({"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
           if recipe.model.gradient_checkpointing else {}),
        dataloader_pin_memory=False,  # nothing to pin to on a CPU; pinning on a GPU gains nothing for token ids
        disable_dropout=True,
        remove_unused_columns=False,  # the reward reads the "row" column
        save_strategy="no",  # saving is ours (RunCallback asks for it)
        logging_steps=1,
        logging_nan_inf_filter=False,  # a non-finite loss must reach our guard, not be averaged away
        report_to=recipe.output.report_to or "none",
        disable_tqdm=True,
        log_completions=False,
    )


class GenerationSampler(Sampler):
    """The prompt order of :class:`GroupedSampler` in TRL's generation layout: each generation batch (a rollout
    batch of prompt indices, each prompt ``samples_per_prompt`` times in a row) is yielded ``repeats`` times, once
    per micro-batch the trainer draws, and only the first is generated from. The order depends on (seed, epoch)
    alone; the Trainer sets the epoch, and skips batches on resume."""

    def __init__(self, grouped: GroupedSampler, batch_size: int, repeats: int):
        self.grouped, self.batch_size, self.repeats = grouped, batch_size, repeats
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> int:
        return (self.grouped.num_prompts * self.grouped.k) // self.batch_size

    def __len__(self) -> int:
        return self.batches() * self.batch_size * self.repeats

    def __iter__(self):
        indices = [i for i in self.grouped.order(self.epoch) for _ in range(self.grouped.k)]
        for b in range(self.batches()):
            batch = indices[b * self.batch_size:(b + 1) * self.batch_size]
            for _ in range(self.repeats):
                yield from batch


class RunTrainer:
    """Mixed in before TRL's RLOOTrainer or GRPOTrainer: the hooks where the run takes over."""

    run: "GroupRun"

    def _get_train_sampler(self, dataset=None):
        return self.run.sampler

    def _tokenize_prompts(self, prompts: list):
        # The prompt set's own token ids: the same as PPO's rollouts and the monitor's, whatever the template does.
        return [list(self.run.prompt_ids[p]) for p in prompts], None, {}

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        # Each prompt is in the batch samples_per_prompt times: encode it once (the same tokens, bit for bit).
        with inference.distinct_prompt_pass(self.run.policy):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        self.run.save_checkpoint()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self.run.load_policy(Path(resume_from_checkpoint).parent)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            # A run extended with more ppo.total_episodes has a longer schedule than the saved optimizer's lr
            # belongs to: take the lr from the new schedule at the restored step (a linear schedule that had
            # decayed to 0 would otherwise freeze the policy for an update).
            scheduler = self.lr_scheduler
            for group, fn in zip(self.optimizer.param_groups, scheduler.lr_lambdas):
                group["lr"] = group["initial_lr"] * fn(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class RunCallback(TrainerCallback):
    """Logs and guards each update, and asks the Trainer to save (which calls :meth:`GroupRun.save_checkpoint`)."""

    def __init__(self, run: "GroupRun"):
        self.run = run
        self.clock = UpdateClock()
        self.fingerprint: float | None = None
        self.progress = None
        self.stop_signal: int | None = None  # set by a Ctrl-C / SIGTERM handler; honoured after the update

    def on_train_begin(self, args, state, control, **kwargs):
        self.fingerprint = self.run.policy_fingerprint()
        self.progress = self.run.progress_bar(state.max_steps, state.global_step)
        self.clock.lap()

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        self.fingerprint = run.warn_if_unchanged(state.global_step, self.fingerprint)
        self.stop_signal = run.agree_on_stop(self.stop_signal)
        # Saved after on_log has logged the update.
        control.should_save = run.save_due(state.global_step, state.max_steps) or self.stop_signal is not None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "reward" not in (logs or {}):
            return  # the Trainer's end-of-training summary, not an update
        run = self.run
        ours = {ours: logs[theirs] for theirs, ours in METRIC_NAMES.items() if theirs in logs}
        if "kl" in logs:
            # TRL logs the mean KL per response token; PPO's KL (and ppo.max_kl) is per response.
            ours["kl"] = logs["kl"] * logs.get("completions/mean_length", 1.0)
        ours["episode"] = state.global_step * run.recipe.rollout_batch_size * run.trainer.accelerator.num_processes
        metrics = run.log_update(state.global_step, ours, run.drain(), self.clock.lap())
        if self.progress is not None:
            self.progress(state.global_step, metrics, run.last_check)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress(None, None)


class GroupRun(OnlineRun):
    """One RLOO or GRPO run: build, (resume,) train, checkpoint."""

    def __init__(self, recipe: Recipe, run_dir: Path, tokenizer, policy, scorer: Scorer, prompts: PromptSet,
                 trainer_class, config, progress_factory=None, monitor: Monitor | None = None):
        from datasets import Dataset

        self.recipe, self.run_dir, self.monitor = recipe, run_dir, monitor
        self.tokenizer, self.scorer = tokenizer, scorer
        require_one_batch(recipe, prompts)
        self.rows = [prompts.lookup.row(ids) for ids in prompts.input_ids]
        self.prompt_ids = {row.text: ids for row, ids in zip(self.rows, prompts.input_ids)}
        self.records: list[dict] = []  # scored rollouts since the last drain
        balance_by = recipe.data.balance_by
        grouped = GroupedSampler(len(self.rows), recipe.ppo.samples_per_prompt, recipe.ppo.seed,
                                 prompts.column(balance_by) if balance_by else None)
        self.sampler = GenerationSampler(grouped, recipe.rollout_batch_size, recipe.ppo.gradient_accumulation_steps)
        self.callback = RunCallback(self)
        self._progress_factory = progress_factory
        self.trainer = trainer_class(
            model=policy,
            reward_funcs=self.reward_function(),
            args=config,
            train_dataset=Dataset.from_dict({"prompt": [row.text for row in self.rows],
                                             "row": list(range(len(self.rows)))}),
            processing_class=tokenizer,
            callbacks=[self.callback],
        )
        self.trainer.run = self  # read by RunTrainer's hooks
        for noisy in (PrinterCallback, ProgressCallback):
            self.trainer.remove_callback(noisy)
        for callback in self.trainer.callback_handler.callbacks:  # TRL's scalars beside ours, in the run directory
            if isinstance(callback, TensorBoardCallback):
                callback.logging_dir = str(tracking.tensorboard_dir(run_dir))
        self.trackers = tracking.Trackers(recipe.output.report_to if self.is_main else [], run_dir, run_dir.name)
        self._fix_adapters(recipe)

    def _fix_adapters(self, recipe: Recipe) -> None:
        """Undo TRL's QLoRA habit of casting a 4-bit model's trainable weights to bfloat16.

        TRL casts after copying "default" into "ref", so the policy would start rounded while the reference kept
        the exact weights (a KL above 0 before any update, and small optimizer steps rounded away on CPUs).
        Restore "default" from the exact copy, in the compute dtype, and keep "ref" frozen.
        """
        policy = self.policy
        dtype = getattr(torch, recipe.model.quantization.compute_dtype)
        for name, param in policy.named_parameters():
            if f".{REF_ADAPTER}." in name:
                param.requires_grad_(False)
        if REF_ADAPTER not in policy.peft_config:
            models.keep_trainable_dtype(policy, recipe.model)
            return
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if ".default." in name:
                    param.data = policy.get_parameter(name.replace(".default.", f".{REF_ADAPTER}.")).data.to(dtype).clone()

    # ----------------------------------------------------------------- parts
    @property
    def policy(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    @property
    def total_updates(self) -> int:
        return self.trainer.args.max_steps

    def reward_function(self):
        """The recipe's reward as TRL's reward functions are called: one float per completion."""

        def reward(prompts, completions, completion_ids, row, **_):
            metadata = [self.rows[i].metadata for i in row]
            texts = [self.rows[i].text for i in row]
            responses = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids]
            ids, mask = left_pad([list(self.prompt_ids[t]) + list(c) for t, c in zip(texts, completion_ids)],
                                 self.tokenizer.pad_token_id)
            scores = torch.as_tensor(self.scorer(RewardBatch(ids, mask, texts, responses, metadata)),
                                     dtype=torch.float32).reshape(-1)
            if scores.numel() != len(responses):
                raise ValueError(f"the reward returned {scores.numel()} scores for {len(responses)} responses")
            check_finite(scores, texts)
            for text, response, score, c in zip(texts, responses, scores.tolist(), completion_ids):
                self.records.append({"prompt": text, "response": response, "reward": score, "response_tokens": len(c)})
            return scores.tolist()

        reward.__name__ = "reward"  # TRL names its logged columns after the function
        return reward

    def drain(self) -> list[dict]:
        records, self.records = self.records, []
        return records

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> checkpoints.Checkpoint:
        """Called by the Trainer when RunCallback asked for a save: the behaviour check, an atomic checkpoint, then
        the stop rules and a pending Ctrl-C."""
        trainer, state = self.trainer, self.trainer.state
        check = self.check_behaviour(state.global_step) if self.save_due(state.global_step, state.max_steps) else None

        def write(directory: Path) -> None:
            state_dir = directory / checkpoints.STATE_DIR
            state_dir.mkdir(exist_ok=True)
            if self.is_main:
                self.policy.save_pretrained(directory / checkpoints.POLICY_DIR, selected_adapters=["default"])
                state.save_to_json(str(state_dir / "trainer_state.json"))
            trainer._save_optimizer_and_scheduler(str(state_dir))
            trainer._save_rng_state(str(state_dir))  # every process: its own RNG state

        ckpt = self.write_checkpoint(state.global_step, {
            "episode": state.global_step * self.recipe.rollout_batch_size * trainer.accelerator.num_processes,
            "total_updates": state.max_steps, "rollout_batch_size": self.recipe.rollout_batch_size,
            "algorithm": self.recipe.algorithm, "digest": self.weights_digest(self.policy),
            "monitor": check.to_dict() if check else None}, write)
        self.stop_after_save(ckpt, check, self.callback.stop_signal, state.max_steps)
        return ckpt

    def load_policy(self, ckpt_dir: Path) -> None:
        """The trained adapter of a checkpoint into "default" (the Trainer restores the rest from ``state/``)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.policy, load_file(ckpt_dir / checkpoints.POLICY_DIR / "adapter_model.safetensors"),
                                  adapter_name="default")

    # ----------------------------------------------------------------- train
    def train(self, resume_from: checkpoints.Checkpoint | None = None) -> None:
        total = self.total_updates
        done = int(resume_from.progress()["step"]) if resume_from else 0
        if done >= total:
            log.info("nothing to do: %s already reached %d of %d updates", resume_from.path.name, done, total)
            return

        def train_from_checkpoint() -> None:  # the Trainer restores weights, optimizer, scheduler and RNG itself
            self.trainer.train(resume_from_checkpoint=_readable_state(resume_from) if resume_from else None)

        self.run_trainer(train_from_checkpoint, from_start=done == 0)



def _readable_state(ckpt: checkpoints.Checkpoint) -> str:
    """The checkpoint's state directory, after reading what the Trainer will restore from it: a damaged file gets a
    one-line error here rather than a traceback from inside ``train()``. torch.load runs with weights_only=True, so
    a file carrying arbitrary objects is refused, not run."""
    state_dir = ckpt.path / checkpoints.STATE_DIR
    try:
        json.loads((state_dir / "trainer_state.json").read_text())
        for name in ("optimizer.pt", "scheduler.pt"):
            torch.load(state_dir / name, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        raise UserError(f"{state_dir}: cannot restore the training state ({str(exc).splitlines()[0][:160]}); "
                        f"fix: delete {ckpt.path.name} to resume from an earlier checkpoint, or train with --fresh") from None
    return str(state_dir)
