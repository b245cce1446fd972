"""What every online trainer's run shares, whichever TRL trainer drives it (PPO, RLOO, GRPO).

The trainer modules (:mod:`~ppo_align.training.ppo`, :mod:`~ppo_align.training.rloo`,
:mod:`~ppo_align.training.grpo`) each import one TRL trainer and adapt it; this one imports none. It holds
the prompt order, the run's logs and guards, the behaviour checks, and Ctrl-C handling.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Sampler

from ppo_align import checkpoints, tracking
from ppo_align.errors import Interrupted, TrainingStopped, UserError
from ppo_align.recipe.schema import Recipe
from ppo_align.rundir import RunDir
from ppo_align.training.monitor import Check, Monitor

log = logging.getLogger(__name__)


class NonFiniteReward(ValueError):
    """A reward source returned NaN or inf for a rollout."""


class StopRule(Exception):
    """A monitor rule ended the run early: an outcome, not an error."""


def check_finite(scores: torch.Tensor, prompts: list[str]) -> None:
    """Raise :class:`NonFiniteReward` before a trainer turns a NaN or inf score into advantages: one would poison
    every weight of the update (and TRL's RLOO/GRPO would silently count a NaN as "unscorable")."""
    if not torch.isfinite(scores).all():
        bad = [(p, s) for p, s in zip(prompts, scores.tolist()) if not math.isfinite(s)]
        raise NonFiniteReward(f"the reward returned {bad[0][1]} for {len(bad)} of {len(prompts)} responses "
                              f"(first prompt: {bad[0][0][:60]!r})")


def require_one_batch(recipe: Recipe, prompts) -> None:
    """Refuse a prompt set smaller than one rollout batch: the loader drops ragged batches, and with none left
    the trainers' endless data iterators would spin forever."""
    samples = len(prompts.input_ids) * recipe.ppo.samples_per_prompt
    if samples < recipe.rollout_batch_size:
        raise UserError(
            f"data.prompts = {recipe.data.prompts!r}: {len(prompts.input_ids)} usable prompts × "
            f"ppo.samples_per_prompt {recipe.ppo.samples_per_prompt} = {samples}, fewer than one rollout batch "
            f"({recipe.rollout_batch_size}); fix: add prompts, raise samples_per_prompt or use smaller batches"
        )


class GroupedSampler(Sampler):
    """Prompt order: a fresh order per epoch from (seed, epoch), each prompt repeated
    ``samples_per_prompt`` times in a row so its samples share a rollout batch.

    With ``classes`` (one value per prompt, from ``data.balance_by``) the epoch deals
    the classes in turn, each shuffled and dealt again when it runs out, so every
    rollout batch holds them in equal shares: a batch of mostly safe prompts would
    otherwise teach "answer more" with little to hold the unsafe ones refused.

    Deterministic from the seed, so a resumed run continues the same sequence by
    skipping what was consumed, instead of an order drawn from the global RNG.
    """

    def __init__(self, num_prompts: int, samples_per_prompt: int, seed: int, classes: list[str] | None = None):
        self.num_prompts, self.k, self.seed = num_prompts, samples_per_prompt, seed
        self.classes = classes
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return self.num_prompts * self.k - self.skip

    def __iter__(self):
        order = self.order(self.epoch)
        indices = [i for i in order for _ in range(self.k)][self.skip:]
        self.epoch, self.skip = self.epoch + 1, 0
        yield from indices

    def order(self, epoch: int) -> list[int]:
        """The prompts of ``epoch`` in the order they are dealt (num_prompts of them)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if not self.classes:
            return torch.randperm(self.num_prompts, generator=generator).tolist()
        groups: dict[str, list[int]] = {}
        for i, value in enumerate(self.classes):
            groups.setdefault(value, []).append(i)
        queues: dict[str, list[int]] = {value: [] for value in sorted(groups)}
        order: list[int] = []
        while len(order) < self.num_prompts:
            for value, queue in queues.items():
                if not queue:
                    queue += [groups[value][j] for j in torch.randperm(len(groups[value]), generator=generator).tolist()]
                order.append(queue.pop())
                if len(order) == self.num_prompts:
                    break
        return order

    def seek(self, batches_done: int, batch_size: int) -> None:
        per_epoch = (self.num_prompts * self.k) // batch_size  # the loader drops the ragged last batch
        self.epoch, self.skip = divmod(batches_done, per_epoch)
        self.skip *= batch_size


class OnlineRun:
    """The parts of a run that do not depend on the algorithm. Subclasses set ``recipe``, ``run_dir``,
    ``monitor`` and ``trainer`` (a transformers Trainer), and say where the policy is."""

    recipe: Recipe
    run_dir: Path
    monitor: Monitor | None
    trainer = None
    stopped_by: str | None = None
    last_check: Check | None = None
    trackers: tracking.Trackers
    _progress_factory = None

    @property
    def policy(self):
        """The policy as a PeftModel with its trained adapter ("default") active."""
        raise NotImplementedError

    @property
    def is_main(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def progress_bar(self, total: int, done: int):
        return self._progress_factory(total, done) if self._progress_factory and self.is_main else None

    def policy_fingerprint(self) -> float:
        with torch.no_grad():
            return float(sum(p.double().abs().sum() for p in self.policy.parameters() if p.requires_grad))

    def append_jsonl(self, name: str, record: dict) -> None:
        if not self.is_main:
            return
        with RunDir(self.run_dir).log(name).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def stop_message(self, step: int, why: str, fix: str) -> str:
        last = checkpoints.latest_complete(self.run_dir)
        kept = f"the last good checkpoint is {last.path.name}" if last else "no checkpoint was saved yet"
        return f"training stopped at {self.update_name} {step}: {why}; {kept}; fix: {fix}"

    @property
    def update_name(self) -> str:
        """How logs name one update: "PPO update", "GRPO update"."""
        return f"{self.recipe.algorithm.upper()} update"

    def log_update(self, step: int, metrics: dict, records: list[dict], elapsed: float) -> dict:
        """Write one update's metrics and samples, and stop on non-finite values or a KL past ``ppo.max_kl``.

        ``metrics`` are the trainer's, already in our names; ``records`` the update's scored rollouts.
        """
        metrics = {"step": step, **metrics}
        rewards = torch.tensor([r["reward"] for r in records]) if records else torch.zeros(0)
        metrics["reward_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
        metrics["step_time_s"] = round(elapsed, 3)
        metrics["tokens_per_s"] = round(sum(r["response_tokens"] for r in records) / elapsed, 2) if elapsed else None
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise TrainingStopped(self.stop_message(step, f"non-finite {', '.join(bad)}",
                                                    "lower ppo.learning_rate or check the reward for NaN/inf"))
        self.append_jsonl("metrics.jsonl", metrics)
        if step % self.recipe.output.sample_every == 0 or step == 1:
            shown = records[: self.recipe.rollout_batch_size]
            for record in shown:
                self.append_jsonl("samples.jsonl", {"step": step, **record})
            self.trackers.table("samples", ["prompt", "response", "reward"],
                                [[r["prompt"], r["response"], round(r["reward"], 4)] for r in shown], step)
        max_kl = self.recipe.ppo.max_kl
        if max_kl is not None and metrics.get("kl", 0.0) > max_kl:
            raise TrainingStopped(self.stop_message(step, f"KL {metrics['kl']:.3f} exceeded ppo.max_kl = {max_kl}",
                                                    "raise ppo.kl_coef or lower ppo.learning_rate"))
        return metrics

    def warn_if_unchanged(self, step: int, before: float | None) -> float:
        """Warn when an update left every trainable policy weight as it was; return the new fingerprint."""
        fingerprint = self.policy_fingerprint()
        if fingerprint == before:
            log.warning("%s %d left every policy LoRA weight unchanged: the policy is not learning "
                        "(on CPU, see models.keep_4bit_gradients_on_cpu)", self.update_name, step)
        return fingerprint

    def save_due(self, step: int, total: int) -> bool:
        """Whether update ``step`` ends with a scheduled checkpoint (every ``ppo.save_steps``, and the last)."""
        return step % self.recipe.ppo.save_steps == 0 or step >= total

    def stop_after_save(self, ckpt: checkpoints.Checkpoint, check: Check | None, stop_signal: int | None,
                        total: int) -> None:
        """After a save: a pending Ctrl-C / SIGTERM ends the run, and so does a broken monitor floor."""
        if stop_signal is not None:
            raise Interrupted(f"interrupted after {self.update_name} {ckpt.step} of {total}, saved as "
                              f"{ckpt.path.name}; run the same train command again to resume", stop_signal)
        if check is not None and check.floor_broken and self.recipe.monitor.stop_below_floor:
            raise StopRule(f"stopped by monitor rule at {self.update_name} {ckpt.step}: {'; '.join(check.violations)}")

    def run_trainer(self, train_call, *, from_start: bool) -> None:
        """Run ``train_call`` (the trainer's loop) with the behaviour check at step 0, Ctrl-C handling and the
        outcomes every algorithm shares: a monitor stop is a result, a non-finite reward a stop with the last
        checkpoint kept."""
        # TRL's trainers run gc.collect() every update; with the models' many long-lived objects moved to the
        # permanent generation those collections become cheap (measured: ~70% of a tiny model's PPO update time).
        gc.collect()
        gc.freeze()
        try:
            if self.monitor is not None and from_start:
                self.check_behaviour(0)  # the starting point (the reference) on the same prompts
            with stop_after_update_on_signal(self.callback):
                train_call()
        except StopRule as stop:
            self.stopped_by = str(stop)
            log.warning("%s", stop)
        except NonFiniteReward as exc:
            step = self.trainer.state.global_step + 1
            raise TrainingStopped(self.stop_message(step, str(exc), "make the reward return finite numbers")) from None
        finally:
            gc.unfreeze()
            self.trackers.close()

    def check_behaviour(self, step: int) -> Check | None:
        """Run the monitor on the policy now; log it to monitor.jsonl."""
        if self.monitor is None:
            return None
        check = self.monitor.check(self.policy, step)
        self.append_jsonl("monitor.jsonl", check.to_dict())
        self.trackers.scalars({**{f"monitor/refusal_when_expected_{k}": v for k, v in check.refusal.items()},
                               "monitor/pairs_told_apart": check.discrimination}, step)
        self.last_check = check
        log.info("behaviour check at %s %d: %s", self.update_name, step, check.summary())
        return check

    def agree_on_stop(self, stop_signal: int | None) -> int | None:
        """With several processes, a signal that reached any of them stops all of them after the same update."""
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:
            signals = accelerator.gather(torch.tensor([stop_signal or 0], device=accelerator.device))
            return int(signals.max()) or None
        return stop_signal

    def weights_digest(self, *modules) -> str:
        """sha256 of this process's trainable weights of ``modules``, in name order."""
        import hashlib

        digest = hashlib.sha256()
        for module in modules:
            for name, param in sorted(module.named_parameters()):
                if param.requires_grad:
                    digest.update(name.encode())
                    digest.update(param.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def write_checkpoint(self, step: int, progress: dict, write) -> checkpoints.Checkpoint:
        """Save atomically, with each process's weight digest in progress.json (only the main process writes the
        adapters, on the premise that data-parallel training keeps every copy identical: the digests check it)."""
        from accelerate.utils import gather_object

        accelerator = self.trainer.accelerator
        digests = gather_object([progress.pop("digest")])  # one process: the list as it is
        if len(set(digests)) > 1:
            log.error("update %d: the processes' trainable weights differ (%s); the saved adapters are the main "
                      "process's", step, ", ".join(d[:12] for d in digests))
        ckpt = checkpoints.write_checkpoint(
            self.run_dir, step, {**progress, "processes": accelerator.num_processes, "weights_per_process": digests},
            write, main=self.is_main, barrier=accelerator.wait_for_everyone,
        )
        if self.is_main:
            checkpoints.prune(self.run_dir, self.recipe.output.keep_checkpoints)
        return ckpt


class UpdateClock:
    """Seconds since the last update ended."""

    def __init__(self):
        self.started = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.started = now - self.started, now
        return elapsed


@contextmanager
def stop_after_update_on_signal(callback):
    """First Ctrl-C (or SIGTERM, as schedulers send before killing a job): set ``callback.stop_signal`` so the update
    in progress finishes and is saved, then the run stops. A second Ctrl-C raises KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return

    def request_stop(signum, frame):
        if callback.stop_signal is not None:
            raise KeyboardInterrupt
        callback.stop_signal = signum
        log.warning("%s: finishing the update in progress, then saving a checkpoint "
                    "(press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
