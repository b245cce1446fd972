"""PPO on TRL's experimental trainer: the only module that imports ``trl.experimental.ppo``.

TRL 1.12's PPOTrainer runs one monolithic loop with no resume and saves only
the policy. We add, without copying its loop:

* checkpoints with the policy adapter, the value adapter and head, optimizer,
  scheduler and every RNG (accelerate ``save_state``), written atomically;
* resume: state restored before ``train()``, the loop shortened to the
  remaining updates, and the counters TRL resets put back in
  ``on_train_begin`` (which TRL calls right after resetting them);
* a deterministic, resumable prompt order that keeps the samples of one
  prompt in the same rollout batch (``ppo.samples_per_prompt``);
* metrics.jsonl / samples.jsonl, a progress bar, and guards (non-finite
  values, KL budget, updates that change nothing);
* Ctrl-C / SIGTERM: the update in progress finishes and is saved, then the run
  stops (a second Ctrl-C stops at once; atomic saves keep the last checkpoint);
* several processes (``accelerate launch``): every process trains and saves its
  own RNG state, only the main one writes logs and adapters, and all agree on
  when to stop.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import types
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# We pin TRL to the release that has this module and isolate it here; its "experimental" warning
# on every import tells users nothing they can act on.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trl.experimental.ppo import ppo_trainer as _trl_ppo  # noqa: E402

from ppo_align import checkpoints, inference, models, tracking
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
from ppo_align.training.monitor import Check, Monitor
from ppo_align.training.prompts import PromptSet

log = logging.getLogger(__name__)

# TRL's names for the values we log, mapped to ours (metrics.jsonl keys).
METRIC_NAMES = {
    "objective/scores": "reward_mean",
    "objective/kl": "kl",
    "objective/entropy": "entropy",
    "objective/non_score_reward": "non_score_reward",
    "objective/rlhf_reward": "rlhf_reward",
    "loss/policy_avg": "policy_loss",
    "loss/value_avg": "value_loss",
    "policy/clipfrac_avg": "clip_frac",
    "val/clipfrac_avg": "value_clip_frac",
    "policy/approxkl_avg": "approx_kl",
    "policy/entropy_avg": "policy_entropy",
    "lr": "lr",
    "episode": "episode",
}


def build_config(recipe: Recipe, run_dir: Path) -> PPOConfig:
    """TRL's PPOConfig from the recipe. Saving is ours (TRL's would omit the value model)."""
    p = recipe.ppo
    return PPOConfig(
        output_dir=str(run_dir),
        learning_rate=p.learning_rate,
        per_device_train_batch_size=p.per_device_train_batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        num_mini_batches=p.num_mini_batches,
        num_ppo_epochs=p.num_ppo_epochs,
        total_episodes=p.total_episodes,
        response_length=p.response_length,
        temperature=p.temperature,
        kl_coef=p.kl_coef,
        kl_estimator=p.kl_estimator,
        cliprange=p.cliprange,
        cliprange_value=p.cliprange_value,
        vf_coef=p.vf_coef,
        gamma=p.gamma,
        lam=p.lam,
        whiten_rewards=p.whiten_rewards,
        missing_eos_penalty=p.missing_eos_penalty,
        local_rollout_forward_batch_size=p.local_rollout_forward_batch_size,
        lr_scheduler_type=p.lr_scheduler_type,
        warmup_steps=p.warmup_steps,
        seed=p.seed,
        stop_token="eos",
        **models.trainer_precision(recipe.model),
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        save_strategy="no",
        logging_steps=1,
        num_sample_generations=0,
        report_to=recipe.output.report_to or "none",
        disable_tqdm=True,
        # After a warm start TRL switches to the frozen warm-start adapter for reference passes.
        **({"model_adapter_name": "default", "ref_adapter_name": models.REFERENCE_ADAPTER}
           if recipe.reference_mode == "warm-start" else {}),
    )


class TRLRewardModule(nn.Module):
    """Any reward source, shaped as the reward model TRL's rollout calls.

    TRL's ``get_reward`` calls ``getattr(model, model.base_model_prefix)`` on the
    rollout ids and feeds ``hidden_states[-1]`` to ``model.score``, reading the
    value at the last response token. The backbone here decodes the ids, scores
    the texts, and returns each score broadcast over every position.
    """

    base_model_prefix = "backbone"

    def __init__(self, scorer: Scorer, prompts: PromptSet, tokenizer):
        super().__init__()
        self.scorer, self.lookup, self.tokenizer = scorer, prompts.lookup, tokenizer
        self.records: list[dict] = []  # rollout records since the last drain
        self.score = nn.Identity()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # lets TRL call .to(device)

    def backbone(self, input_ids, attention_mask, **_):
        prompts, responses, metadata, lengths = [], [], [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            row, response_ids = self.lookup.split([t for t, m in zip(ids, mask) if m])
            prompts.append(row.text)
            responses.append(self.tokenizer.decode(response_ids, skip_special_tokens=True))
            metadata.append(row.metadata)
            lengths.append(len(response_ids))
        scores = self.scorer(RewardBatch(input_ids, attention_mask, prompts, responses, metadata))
        scores = torch.as_tensor(scores, dtype=torch.float32, device=input_ids.device).reshape(-1)
        if scores.numel() != len(responses):
            raise ValueError(f"the reward returned {scores.numel()} scores for {len(responses)} responses")
        check_finite(scores, prompts)
        for prompt, response, score, n in zip(prompts, responses, scores.tolist(), lengths):
            self.records.append({"prompt": prompt, "response": response, "reward": score, "response_tokens": n})
        return types.SimpleNamespace(hidden_states=(scores.view(-1, 1, 1).expand(-1, input_ids.shape[1], 1),))

    def drain(self) -> list[dict]:
        records, self.records = self.records, []
        return records


# TRL's PPO runs its reference and training passes through one module-level ``forward`` and reads
# ``logits[:, context_length - 1 : -1]``: the response positions. Its language-model head still projects
# every prompt position too (about 50 of 74 at the default shape) onto the 49k-token vocabulary, forward
# and backward. The two replacements below record the rollout's context length when TRL generates, ask
# the model for the positions TRL reads only (``logits_to_keep``), and put them where TRL reads them.
# The values are the same bit for bit (tested): the head projects each position on its own.
_CONTEXT_LENGTH = "_ppo_align_context_length"
_trl_batch_generation, _trl_forward = _trl_ppo.batch_generation, _trl_ppo.forward


def _batch_generation(model, queries, *args, **kwargs):
    setattr(model, _CONTEXT_LENGTH, queries.shape[1])  # model: the policy, which the passes below also use
    with inference.distinct_prompt_pass(model):  # each prompt is in the batch samples_per_prompt times
        return _trl_batch_generation(model, queries, *args, **kwargs)


def _policy_of(model):
    """The policy inside TRL's policy + value wrapper (training passes), or the policy itself (reference passes)."""
    return model.policy if isinstance(getattr(model, "policy", None), nn.Module) else model


def _forward(model, query_responses, pad_token_id):
    context = _policy_of(model).__dict__.get(_CONTEXT_LENGTH)
    if context is None or context >= query_responses.shape[1]:
        return _trl_forward(model, query_responses, pad_token_id)
    keep = query_responses.shape[1] - context + 1  # the last prompt position predicts the first response token
    # The inputs TRL's own forward builds (it takes no extra keyword to pass logits_to_keep through).
    attention_mask = query_responses != pad_token_id
    output = model(
        input_ids=torch.masked_fill(query_responses, ~attention_mask, 0),
        attention_mask=attention_mask,
        position_ids=attention_mask.cumsum(1) - attention_mask.long(),
        return_dict=True,
        output_hidden_states=True,
        logits_to_keep=keep,
    )
    policy_output = output[0] if isinstance(output, tuple) else output  # the policy + value wrapper returns a pair
    kept = policy_output.logits
    # The prompt positions stay unwritten (TRL never reads them): an empty tensor commits no memory there.
    logits = kept.new_empty(kept.shape[0], query_responses.shape[1], kept.shape[2])
    logits[:, -keep:] = kept
    policy_output.logits = logits
    return output


_trl_ppo.batch_generation, _trl_ppo.forward = _batch_generation, _forward


class FrozenLowerLayers:
    """A decoder's frozen lower layers, computed once per rollout batch instead of once more per training pass.

    When a model trains adapters in its top layers only, the layers below hold no trainable weight, and TRL's
    training passes would recompute what a no-grad pass of the rollout already computed over the same
    sequences. That pass keeps each sequence's output of the last frozen layer; a training pass whose sequences
    were all kept starts from there and runs the trained layers only. For the value model (``value.lora.
    last_layers``) the keeping pass is its own rollout pass; for the policy (``ppo.train_last_layers``) it is the
    reference pass, whose lower layers are the policy's (``for_policy`` checks it). A value model built on the
    reference (``value.trunk: reference``) can read the reference pass's states too (``read_from``), so its own
    rollout pass skips those layers as well. Values, losses and weights stay the same bit for bit (tested): a row's
    output of these layers does not depend on the other rows of its batch on the CPU kernels. What is kept lives
    one rollout batch (a few MB at the default shape).
    """

    def __init__(self, decoder: nn.Module, layers: nn.ModuleList, frozen: int):
        self.frozen = frozen
        self.kept: dict[bytes, torch.Tensor] = {}
        self.replays = 0
        """Training passes that started from kept states."""
        self.borrowed = 0
        """No-gradient passes that started from states another model's pass kept (see ``read_from``)."""
        self._source: FrozenLowerLayers | None = None  # whose states to read, once a pass has matched them
        self._shared = False
        self._keys: list[bytes] = []
        self._mode = "compute"  # per pass: "record" (no gradients), "replay" (all rows kept) or "compute"
        self._trained = False  # a pass with gradients ran since the last recording
        decoder.register_forward_pre_hook(self._start_pass, with_kwargs=True)
        for index in range(frozen):
            # An instance attribute, not a wrapper module: the adapter's saved names stay as they are.
            layers[index].forward = self._layer_forward(layers[index].forward, last=index == frozen - 1)

    @classmethod
    def for_value_model(cls, value_model: nn.Module) -> "FrozenLowerLayers | None":
        """Set up on the value model if its lowest decoder layers have no trainable weight; None otherwise."""
        decoder, layers, frozen = _frozen_prefix(value_model)
        return cls(decoder, layers, frozen) if frozen else None

    @classmethod
    def for_policy(cls, policy: nn.Module, reference_adapter: str | None) -> "FrozenLowerLayers | None":
        """Set up on the policy if its lowest decoder layers have no trainable weight and compute what the
        reference's do (``reference_adapter``, or adapters disabled when None); None otherwise."""
        decoder, layers, frozen = _frozen_prefix(policy)
        if not frozen or not _same_weights(layers[:frozen], "default", reference_adapter):
            return None
        return cls(decoder, layers, frozen)

    def read_from(self, source: "FrozenLowerLayers") -> None:
        """Read the states ``source`` keeps (the policy's, from the reference pass), instead of keeping this
        model's own, if these layers compute what source's do. That is checked, not assumed: the next pass that
        finds its sequences kept by ``source`` computes its own states as usual and compares them, bit for bit."""
        if source.frozen == self.frozen:
            self._source = source

    def _start_pass(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        # Embeddings given, a prepared 4-D mask, a generation step (a cache), or inference-mode tensors (which
        # could not feed a pass with gradients later): computed as usual.
        if (input_ids is None or (mask is not None and mask.dim() != 2) or kwargs.get("cache") is not None
                or torch.is_inference_mode_enabled()):
            self._mode = "compute"
            return
        # Keyed by tokens and mask: TRL derives the positions from the mask in both passes.
        ids = input_ids.cpu().numpy()
        masks = mask.cpu().numpy() if mask is not None else None
        self._keys = [ids[row].tobytes() + (masks[row].tobytes() if masks is not None else b"") for row in range(len(ids))]
        if not torch.is_grad_enabled():
            if self._shared and all(key in self.kept for key in self._keys):
                self._mode = "replay"
                self.borrowed += 1
                return
            if self._trained and not self._shared:  # a new rollout batch: the last one's states are done with
                self.kept.clear()  # (a shared store is the source's to clear)
                self._trained = False
            self._mode = "record"
        else:
            self._trained = True
            self._mode = "replay" if all(key in self.kept for key in self._keys) else "compute"
            self.replays += self._mode == "replay"

    def _layer_forward(self, forward, last: bool):
        def run(hidden_states, *args, **kwargs):
            if self._mode == "replay":
                return torch.stack([self.kept[key] for key in self._keys]) if last else hidden_states
            output = forward(hidden_states, *args, **kwargs)
            if last and self._mode == "record":
                rows = output.unbind(0)
                if self._source is not None:
                    self._compare_with_source(rows)
                self.kept.update(zip(self._keys, rows))
            return output

        return run

    def _compare_with_source(self, rows) -> None:
        theirs = [self._source.kept.get(key) for key in self._keys]
        if any(state is None for state in theirs):
            return  # not kept by the source (yet): compare on a later pass
        if all(torch.equal(mine, state) for mine, state in zip(rows, theirs)):
            self.kept, self._shared = self._source.kept, True
            log.info("value model: its %d frozen lower layers compute what the reference's do; it reads the "
                     "reference pass's states from now on", self.frozen)
        else:
            log.debug("value model: its frozen lower layers differ from the reference's; it keeps its own states")
        self._source = None


def _frozen_prefix(model: nn.Module) -> tuple[nn.Module | None, nn.ModuleList | None, int]:
    """The decoder, its layers, and how many of the lowest hold no trainable weight (0 when there is no decoder)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return None, None, 0
    frozen = 0
    while frozen < len(layers) and not any(p.requires_grad for p in layers[frozen].parameters()):
        frozen += 1
    return decoder, layers, frozen


def _same_weights(layers: nn.ModuleList, adapter: str, other: str | None) -> bool:
    """Whether ``layers`` compute the same with ``adapter`` active as with ``other`` (None: adapters disabled, which
    an adapter whose B is zero matches): identical LoRA weights, dtype included, wherever either is present."""
    for module in layers.modules():
        a_parts, b_parts = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(b_parts, nn.ModuleDict):
            continue
        if other is None:
            if adapter in b_parts and b_parts[adapter].weight.any():
                return False
            continue
        for parts in (a_parts, b_parts):
            if (adapter in parts) != (other in parts):
                return False
            if adapter in parts:
                a, b = parts[adapter].weight, parts[other].weight
                if a.dtype != b.dtype or not torch.equal(a, b):
                    return False
    return True


SCHEDULER_FILE = "scheduler.json"


class RunCallback(TrainerCallback):
    """Logs, guards, checkpoints and the resume counters, around TRL's loop."""

    def __init__(self, run: "PPORun"):
        self.run = run
        self.restore: dict | None = None
        self.clock = UpdateClock()
        self.fingerprint: float | None = None
        self.progress = None
        self.stop_signal: int | None = None  # set by a Ctrl-C / SIGTERM handler; honoured after the update

    def on_train_begin(self, args, state, control, **kwargs):
        if self.restore:  # TRL reset these just before calling us
            for key, value in self.restore.items():
                setattr(state, key, value)
            self.restore = None
        self.fingerprint = self.run.policy_fingerprint()
        self.progress = self.run.progress_bar(state.max_steps, state.global_step)
        self.clock.lap()

    def on_log(self, args, state, control, logs=None, **kwargs):
        ours = {ours: logs[theirs] for theirs, ours in METRIC_NAMES.items() if theirs in logs}
        metrics = self.run.log_update(state.global_step, ours, self.run.reward.drain(), self.clock.lap())
        if self.progress is not None:
            self.progress(state.global_step, metrics, self.run.last_check)

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        self.fingerprint = run.warn_if_unchanged(state.global_step, self.fingerprint)
        due = run.save_due(state.global_step, state.max_steps)
        self.stop_signal = run.agree_on_stop(self.stop_signal)
        if due or self.stop_signal is not None:
            check = run.check_behaviour(state.global_step) if due else None
            run.stop_after_save(run.save(state, check), check, self.stop_signal, state.max_steps)
        self.clock.lap()

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress(None, None)


class PPORun(OnlineRun):
    """One PPO run over TRL's trainer: build, (resume,) train, checkpoint."""

    def __init__(self, recipe: Recipe, run_dir: Path, tokenizer, policy, value_model, scorer: Scorer,
                 prompts: PromptSet, progress_factory=None, monitor: Monitor | None = None):
        self.recipe, self.run_dir, self.monitor = recipe, run_dir, monitor
        require_one_batch(recipe, prompts)
        if recipe.ppo.train_last_layers:  # before TRL builds the optimizer from the trainable weights
            models.freeze_lower_layers(policy, recipe.ppo.train_last_layers)
        self.reward = TRLRewardModule(scorer, prompts, tokenizer)
        self.callback = RunCallback(self)
        self._progress_factory = progress_factory
        self.trainer = PPOTrainer(
            args=build_config(recipe, run_dir),
            processing_class=tokenizer,
            model=policy,  # a PeftModel: with ref_model=None, TRL's reference is this model with adapters disabled
            ref_model=None,
            reward_model=self.reward,
            value_model=value_model,
            train_dataset=prompts.dataset(),
            callbacks=[self.callback],
        )
        for noisy in (PrinterCallback, ProgressCallback):
            self.trainer.remove_callback(noisy)
        self.critic_layers = FrozenLowerLayers.for_value_model(self.unwrapped.value_model)
        if self.critic_layers:
            log.info("value model: its %d frozen lower layers run once per rollout batch", self.critic_layers.frozen)
        self.policy_layers: FrozenLowerLayers | None = None  # set up in train(), once a checkpoint is loaded
        if recipe.ppo.train_last_layers:
            self._keep_lower_layers_frozen()
        # TRL's PPO prints one thing through the accelerator, "===training policy===" at every start; the progress
        # bar already says so.
        self.trainer.accelerator.print = lambda *args, **kwargs: None
        for callback in self.trainer.callback_handler.callbacks:  # TRL's scalars beside ours, in the run directory
            if isinstance(callback, TensorBoardCallback):
                callback.logging_dir = str(tracking.tensorboard_dir(run_dir))
        self.trackers = tracking.Trackers(recipe.output.report_to if self.is_main else [], run_dir, run_dir.name)
        if isinstance(self.trainer.model, nn.parallel.DistributedDataParallel):
            # TRL 1.12 reads `.policy` off the wrapped model for its reference passes, where under DDP it is
            # an attribute of the inner module. Expose it without registering a submodule: DDP's parameter
            # set is fixed when it wraps the model.
            object.__setattr__(self.trainer.model, "policy", self.unwrapped.policy)
        accelerator = self.trainer.accelerator
        # Replace TRL's shuffled loader (same batch size, collator and drop_last) with a resumable order.
        balance_by = recipe.data.balance_by
        self.sampler = GroupedSampler(len(prompts.input_ids), recipe.ppo.samples_per_prompt, recipe.ppo.seed,
                                      prompts.column(balance_by) if balance_by else None)
        self.trainer.dataloader = accelerator.prepare(DataLoader(
            self.trainer.train_dataset,
            batch_size=self.trainer.local_dataloader_batch_size,
            sampler=self.sampler,
            collate_fn=self.trainer.data_collator,
            drop_last=True,
            # Without its own generator, every new DataLoader iterator draws a seed from the global
            # torch RNG, which would shift the sampling stream of a resumed run.
            generator=torch.Generator().manual_seed(recipe.ppo.seed),
        ))
        # Checkpoint state = optimizer and RNG (accelerate, loaded with weights_only) + the scheduler as JSON
        # (accelerate would pickle it, and unpickle it without weights_only on resume); model weights
        # are saved as adapters instead (a full state dict would carry the 4-bit base).
        accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: (models.clear(), weights.clear()))
        accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    def _keep_lower_layers_frozen(self) -> None:
        """After each reference pass TRL switches back to the policy's adapter, and PEFT's ``set_adapter`` makes
        all of it trainable again: freeze the lower layers once more, before the training passes."""
        reference_pass = self.trainer.null_ref_context

        @contextmanager
        def then_refreeze():
            with reference_pass():
                yield
            models.freeze_lower_layers(self.policy, self.recipe.ppo.train_last_layers)

        self.trainer.null_ref_context = then_refreeze

    # ----------------------------------------------------------------- parts
    @property
    def unwrapped(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    @property
    def policy(self):
        return self.unwrapped.policy

    @property
    def total_updates(self) -> int:
        return self.trainer.args.num_total_batches

    # ----------------------------------------------------------------- checkpoints
    def save(self, state, check: Check | None = None) -> checkpoints.Checkpoint:
        accelerator = self.trainer.accelerator

        def write(directory: Path) -> None:
            if self.is_main:  # the adapters are the same in every process
                # Only the trained adapter: the frozen reference adapter lives in the run's warm-start directory.
                self.policy.save_pretrained(directory / checkpoints.POLICY_DIR, selected_adapters=["default"])
                self.unwrapped.value_model.save_pretrained(directory / checkpoints.VALUE_DIR, selected_adapters=["default"])
            accelerator.save_state(str(directory / checkpoints.STATE_DIR))  # every process: its own RNG state
            if self.is_main:
                (directory / checkpoints.STATE_DIR / SCHEDULER_FILE).write_text(json.dumps(self.trainer.lr_scheduler.state_dict()))

        return self.write_checkpoint(state.global_step, {
            "episode": state.episode, "total_updates": state.max_steps, "rollout_batch_size": self.trainer.args.batch_size,
            "digest": self.weights_digest(self.policy, self.unwrapped.value_model),
            "monitor": check.to_dict() if check else None}, write)

    def load(self, ckpt: checkpoints.Checkpoint) -> int:
        """Restore adapters, optimizer, scheduler and RNG from a checkpoint; return the updates done."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for module, part in ((self.unwrapped.policy, checkpoints.POLICY_DIR), (self.unwrapped.value_model, checkpoints.VALUE_DIR)):
            set_peft_model_state_dict(module, load_file(ckpt.path / part / "adapter_model.safetensors"))
        state_dir = ckpt.path / checkpoints.STATE_DIR
        try:
            self.trainer.accelerator.load_state(str(state_dir))
            self.trainer.lr_scheduler.load_state_dict(json.loads((state_dir / SCHEDULER_FILE).read_text()))
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, FileNotFoundError) as exc:
            # torch.load runs with weights_only=True, so a file carrying arbitrary objects is refused, not run.
            raise UserError(f"{state_dir}: cannot restore the training state ({str(exc).splitlines()[0][:160]}); "
                            f"fix: delete {ckpt.path.name} to resume from an earlier checkpoint, or train with --fresh") from None
        # The optimizer state carries the learning rate of the saved schedule. If the run was extended
        # (more ppo.total_episodes), the schedule's length changed: take the lr from the new schedule
        # at the restored step, or a linear schedule that had decayed to 0 would freeze the policy.
        scheduler = self.trainer.lr_scheduler
        for group, lr in zip(self.trainer.optimizer.param_groups, scheduler.get_lr()):
            group["lr"] = lr
        scheduler._last_lr = [group["lr"] for group in self.trainer.optimizer.param_groups]
        return int(ckpt.progress()["step"])

    # ----------------------------------------------------------------- train
    def train(self, resume_from: checkpoints.Checkpoint | None = None) -> None:
        total = self.total_updates
        done = self.load(resume_from) if resume_from else 0
        if self.recipe.ppo.train_last_layers and self.policy_layers is None:
            # After loading: the check that the frozen layers are the reference's must see the weights that train.
            reference = models.REFERENCE_ADAPTER if self.recipe.reference_mode == "warm-start" else None
            self.policy_layers = FrozenLowerLayers.for_policy(self.policy, reference)
            if self.policy_layers:
                log.info("policy: its %d frozen lower layers run once per rollout batch, in the reference pass",
                         self.policy_layers.frozen)
                if self.critic_layers:  # shares them if it is built on the reference (value.trunk), as checked
                    self.critic_layers.read_from(self.policy_layers)
        if done >= total:
            log.info("nothing to do: %s already reached %d of %d updates", resume_from.path.name, done, total)
            return
        if done:
            # Each process draws its own batch per update from the one shared order.
            self.sampler.seek(done * self.trainer.accelerator.num_processes, self.trainer.local_dataloader_batch_size)
            self.callback.restore = {"global_step": done, "episode": done * self.trainer.args.batch_size, "max_steps": total}
            self.trainer.args.num_total_batches = total - done  # TRL loops `for update in range(1, num_total_batches + 1)`
        try:
            self.run_trainer(self.trainer.train, from_start=done == 0)
        finally:
            self.trainer.args.num_total_batches = total
