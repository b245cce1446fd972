"""`ppo-align plan`: how much memory a recipe's PPO stage needs, from the model config alone.

The estimate is first-principles arithmetic, not a fit to measurements: weights (4-bit linear
layers at half a byte per parameter plus one fp32 scale per 64-value block, everything else in the
compute dtype), LoRA adapters with their gradients and AdamW moments, and the larger of the two
activation peaks of a PPO update:

* rollout: the KV cache of a generation batch and the full-vocabulary logits of the reference pass
  over ``local_rollout_forward_batch_size`` sequences;
* optimisation: one micro-batch (``per_device_train_batch_size`` sequences) through the policy and
  the value model with autograd — the tensors each decoder layer keeps for backward, plus the
  policy's logits, log-softmax and their gradient.

Sequences are counted at their longest (``data.max_prompt_length`` + ``ppo.response_length``).
`benchmarks/ppo_memory.py` reports the estimate's error against a measured peak: on CPU it
*under*-estimated the peak resident memory by 29% (135M) and 35% (1.1B); allocator retention and
backward-pass transients are not modelled, so leave that headroom.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ppo_align import embedded
from ppo_align.errors import UserError
from ppo_align.recipe.schema import Lora, Recipe

GiB = 1024**3
RUNTIME_BYTES = {"cpu": int(0.6 * GiB), "cuda": int(0.8 * GiB)}
"""The process before any model: Python, torch, transformers and TRL imported (CPU, measured 0.56 GiB), or
the CUDA context and kernels (GPU)."""


@dataclass
class Component:
    name: str
    bytes: int
    note: str = ""


@dataclass
class MemoryPlan:
    """Estimated peak memory of a recipe's PPO stage, by component."""

    model: str
    components: list[Component]
    phase: str
    """Which activation peak is larger: "rollout" or "optimisation"."""
    device: str
    available: int | None = None
    shape: dict = field(default_factory=dict)
    rollout_bytes: int = 0
    optimisation_bytes: int = 0

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def fits(self) -> bool | None:
        """Whether the total fits the available memory; None when the available memory is unknown."""
        return None if self.available is None else self.total <= self.available

    @property
    def exit_code(self) -> int:
        """`ppo-align plan`'s exit code: 1 when it does not fit; 0 when it fits, and when the available memory is
        unknown (not a failure: the verdict asks for --memory)."""
        return 1 if self.fits is False else 0

    def table(self):
        """A rich table: one row per component (GiB and what it is), then the total."""
        from rich.table import Table

        table = Table("component", "GiB", "what", box=None)
        for c in self.components:
            table.add_row(c.name, f"{c.bytes / GiB:.2f}", c.note)
        table.add_row("[bold]total[/bold]", f"[bold]{self.total / GiB:.2f}[/bold]",
                      f"estimated peak on {self.device}; a floor: freed memory the allocator keeps is not "
                      "modelled, so leave headroom")
        return table

    def verdict(self) -> str:
        """One line in rich markup: fits (and how much of the memory it takes), does not fit and how to make it
        fit, or that the available memory is unknown."""
        if self.fits is None:
            return "could not tell how much memory this device has; pass --memory SIZE"
        if self.fits:
            return f"[green]fits[/green] in {self.available / GiB:.1f} GiB ({self.total / self.available:.0%} of it)"
        return (f"[red]does not fit[/red] in {self.available / GiB:.1f} GiB; to fit, lower "
                "ppo.per_device_train_batch_size or ppo.local_rollout_forward_batch_size, shorten "
                "data.max_prompt_length, or set model.gradient_checkpointing: true")

    def to_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "phase": self.phase, "total_gib": self.total / GiB,
                "available_gib": None if self.available is None else self.available / GiB, "fits": self.fits,
                "components": [{"name": c.name, "gib": c.bytes / GiB, "note": c.note} for c in self.components],
                "shape": self.shape}


def parse_memory(text: str) -> int:
    """``"24GiB"``, ``"24 GB"``, ``"80g"`` or ``"512MiB"`` in bytes (GB and GiB both read as powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--memory {text!r}: not an amount of memory; fix: write e.g. 24GiB or 512MiB")
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b"))


def plan_memory(recipe: Recipe, *, available: int | None = None, device: str | None = None) -> MemoryPlan:
    """Estimate the RL stage's peak memory for ``recipe`` and whether it fits ``available`` bytes.

    Args:
        recipe: a loaded recipe.
        available: memory of the device it should fit (default: this machine's GPU memory if it has a
            GPU, else its RAM).
        device: "cpu" or "cuda" (default: "cuda" when a GPU is present).
    """
    device = device or _default_device()
    if available is None:
        available = _device_memory(device)
    cfg = _shape(_config(recipe.model.source), recipe.model.source)
    m, p = recipe.model, recipe.ppo
    h, layers, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    kv = cfg.get("num_key_value_heads") or heads
    act = {"float32": 4, "bfloat16": 2, "float16": 2}[m.quantization.compute_dtype]
    linears = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
               "o_proj": (heads * head_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    linear_params = layers * sum(i * o for i, o in linears.values())
    lm_head = 0 if cfg.get("tie_word_embeddings", True) else vocab * h  # not quantized, like the embeddings
    other_params = vocab * h + (2 * layers + 1) * h

    def base(in_4bit: bool, with_lm_head: bool = True) -> int:
        """A loaded base model; the value and reward models replace the LM head by a scalar head."""
        rest = (other_params + (lm_head if with_lm_head else 0)) * act
        if not in_4bit:
            return linear_params * act + rest
        scales = 4 / 64 if not m.quantization.double_quant else 1 / 64 + 4 / (64 * 256)
        return int(linear_params * (0.5 + scales)) + rest

    def adapted(lora: Lora) -> int:
        return min(lora.last_layers or layers, layers)

    def lora_params(lora: Lora) -> int:
        targets = linears if "all-linear" in lora.target_modules else {
            k: v for k, v in linears.items() if k in lora.target_modules}
        return adapted(lora) * sum(lora.r * (i + o) for i, o in targets.values())

    has_value = recipe.algorithm == "ppo"  # RLOO and GRPO have no value model
    value_section = recipe.value.lora or m.lora
    policy_lora, value_lora = lora_params(m.lora), (lora_params(value_section) + h if has_value else 0)
    # ppo.train_last_layers: the policy's adapter below stays frozen (weights only, no gradients or moments).
    policy_trained_layers = min(p.train_last_layers or layers, adapted(m.lora)) if has_value else adapted(m.lora)
    policy_trained = policy_lora * policy_trained_layers // adapted(m.lora)
    trainable = policy_trained + value_lora
    components = [
        Component("policy base", base(m.quantization.load_in_4bit),
                  "4-bit linear layers + embeddings" if m.quantization.load_in_4bit else "full precision"),
        *([Component("value base", base(m.quantization.load_in_4bit, with_lm_head=False),
                     "a second copy of the base, with a scalar head")] if has_value else []),
        Component("LoRA weights, gradients, AdamW moments", trainable * (4 + 4 + 8) + (policy_lora - policy_trained) * 4,
                  f"{trainable / 1e6:.1f}M trainable parameters ({'policy + value' if has_value else 'policy'})"),
    ]
    if recipe.warm_start is not None or (not has_value and p.kl_coef > 0):
        # PPO's is the frozen warm-start adapter; TRL's RLOO and GRPO copy the starting adapter into one of their own.
        # value.trunk: reference loads the warm-start adapter into the value model as well.
        copies = 2 if has_value and recipe.warm_start is not None and recipe.value.trunk == "reference" else 1
        components.append(Component("reference adapter", copies * policy_lora * 4,
                                    "a frozen copy of the starting adapter" + (", in the policy and the value model"
                                                                               if copies == 2 else "")))
    if recipe.reward.source == "trained":
        components.append(Component("reward model", base(m.quantization.load_in_4bit, with_lm_head=False) + lora_params(m.lora) * 4,
                                    "the base again + its LoRA and head"))
    elif recipe.reward.source == "model":
        rm = _shape(_config(str(recipe.resolve_path(recipe.reward.path))), recipe.reward.path)
        rm_params = rm["vocab_size"] * rm["hidden_size"] + rm["num_hidden_layers"] * 12 * rm["hidden_size"] ** 2
        components.append(Component("reward model", int(rm_params * (0.56 if recipe.reward.load_in_4bit else act)),
                                    "approximate: 12·hidden² per layer"))

    seq = recipe.data.max_prompt_length + p.response_length
    if has_value:  # TRL's PPO generates and scores in chunks of local_rollout_forward_batch_size
        rollout_b = p.local_rollout_forward_batch_size
        rollout = (2 * layers * rollout_b * kv * head_dim * seq * act            # generation KV cache
                   + rollout_b * p.response_length * vocab * 4                     # generation scores TRL keeps
                   + 2 * rollout_b * seq * vocab * act)                            # reference logits + their log-softmax
    else:  # RLOO / GRPO generate the whole rollout batch at once, then score it in micro-batches
        rollout_b = recipe.rollout_batch_size
        rollout = (2 * layers * rollout_b * kv * head_dim * seq * act
                   + 2 * p.per_device_train_batch_size * seq * vocab * act)
    micro = p.per_device_train_batch_size
    tokens = micro * seq
    # Per token and layer, what autograd keeps: norm inputs and outputs, q/k/v/o inputs and outputs, the
    # attention probabilities (one row per head), the MLP's gate, up, activation and product;
    # gradient checkpointing keeps only each layer's input.
    per_token_layer = (h if m.gradient_checkpointing else
                       6 * h + 2 * kv * head_dim + heads * head_dim + heads * seq + 4 * inter)
    # Autograd keeps them only from the lowest adapted layer up, in the policy (and the value model).
    saved = (policy_trained_layers + (adapted(value_section) if has_value else 0)) * tokens * per_token_layer * act
    # The policy's full logits, and over the response: log-softmax, softmax and softmax·logits (entropy),
    # and the logits' gradient.
    logits = micro * seq * vocab * act + 4 * micro * p.response_length * vocab * 4
    optimisation = saved + logits
    phase = "rollout" if rollout > optimisation else "optimisation"
    components += [
        Component("activations", max(rollout, optimisation),
                  f"{phase} peak (rollout {rollout / GiB:.2f} GiB, optimisation {optimisation / GiB:.2f} GiB) "
                  f"at {seq} tokens per sequence"),
        Component("runtime", RUNTIME_BYTES[device], "libraries and framework before any model"),
    ]
    shape = {"hidden_size": h, "layers": layers, "intermediate_size": inter, "vocab_size": vocab, "heads": heads,
             "kv_heads": kv, "parameters": linear_params + other_params + lm_head, "sequence_tokens": seq,
             "rollout_batch": rollout_b, "micro_batch": micro}
    return MemoryPlan(recipe.model.source, components, phase, device, available, shape, rollout, optimisation)


# What other architectures call the sizes the estimate needs (GPT-2, Falcon/MPT-style, T5-style names).
_ALIASES = {"hidden_size": ("n_embd", "d_model"), "num_hidden_layers": ("n_layer", "n_layers", "num_layers"),
            "num_attention_heads": ("n_head", "n_heads", "num_heads"), "intermediate_size": ("n_inner", "ffn_dim", "d_ff")}


def _shape(cfg: dict, source: str) -> dict:
    """The config with the sizes the estimate reads under their Llama names; a clear error when one is missing.

    The estimate counts a gated MLP (gate, up and down projections) as Llama-family models have; for a model with
    a plain two-matrix MLP (GPT-2) it errs high, about 20%."""
    cfg = dict(cfg)
    for key, aliases in _ALIASES.items():
        if cfg.get(key) is None:
            cfg[key] = next((cfg[a] for a in aliases if cfg.get(a) is not None), None)
    if cfg.get("intermediate_size") is None and cfg.get("hidden_size"):
        cfg["intermediate_size"] = 4 * cfg["hidden_size"]  # the classic MLP width, GPT-2's default for n_inner
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if cfg.get(k) is None]
    if missing:
        raise UserError(f"model {source!r}: its config.json has no {', '.join(missing)} (model_type "
                        f"{cfg.get('model_type', 'unknown')!r}), so `plan` cannot size it; fix: plan a decoder-only "
                        "language model (Llama, Qwen, Mistral, GPT-2 style), or measure on the device")
    return cfg


def _config(source: str) -> dict:
    if embedded.is_embedded_source(source):
        path = Path(embedded.ensure_embedded_model(source))
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        try:
            return json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"model.source = {source!r}: cannot read config.json ({exc}); fix: point at a model directory") from None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError) as exc:
        raise UserError(f"model.source = {source!r}: cannot get its config ({str(exc).splitlines()[0][:120]}); "
                        "fix: check the id, or download the model and point at its directory") from None


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_memory(device: str) -> int | None:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
