"""Loading models: source resolution, tokenizer and pad fix, 4-bit quantization, LoRA.

The policy and the value model share one recipe section (``model``): both are
the same base loaded in 4-bit with a LoRA adapter; the value model adds a
scalar head. The reference is never a separate model: it is the policy with its
adapter disabled, or, after a warm start, the frozen warm-start adapter.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

from ppo_align import embedded
from ppo_align.errors import UserError
from ppo_align.files import digest
from ppo_align.recipe.schema import Lora, ModelSection

log = logging.getLogger(__name__)


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be loaded (truncated, not safetensors), from its header alone; None if sound."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(size - 8, 100_000_000):
                return f"{path.name} is not a safetensors file (unreadable header)"
            header = json.loads(f.read(length))
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    except ValueError:
        return f"{path.name} is not a safetensors file (unreadable header)"
    if not isinstance(header, dict):
        return f"{path.name} is not a safetensors file (unreadable header)"
    offsets = [t.get("data_offsets") for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if not all(isinstance(o, list) and len(o) == 2 and all(isinstance(x, int) for x in o) for o in offsets):
        return f"{path.name} is not a safetensors file (unreadable header)"
    end = max((o[1] for o in offsets), default=0)
    if 8 + length + end > size:
        return f"{path.name} is truncated ({size} of {8 + length + end} bytes)"
    return None


def model_dir_problems(path: Path, *, need_weights: bool = False, trust_remote_code: bool = False,
                       chat: bool = False) -> list[str]:
    """What stops ``path`` loading as a Hugging Face model directory, from its small files and weight headers.

    Finds a missing or unreadable config.json and damaged safetensors files in seconds, before any loading;
    ``need_weights`` also requires a weights file (a recipe check does not, so metadata-only directories validate).
    A directory whose config or tokenizer config names its own code ("auto_map") is refused unless
    ``trust_remote_code``: loading it would import and run that code.
    """
    fix = "fix: point at a Hugging Face model directory (config.json, tokenizer and weight files), or restore its files"
    config = path / "config.json"
    if not config.is_file():
        return [f"directory has no config.json, so it is not a model directory; {fix}"]
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"config.json is not valid JSON ({str(exc).splitlines()[0][:80]}); {fix}"]
    if not isinstance(data, dict):
        return [f"config.json is not a JSON object; {fix}"]
    problems = [f"{p}; {fix}" for p in map(safetensors_problem, sorted(path.glob("*.safetensors"))) if p]
    if not trust_remote_code:
        problems += [f"{name} asks to run the model's own Python code (auto_map); ppo-align runs it only when the "
                     "recipe says model.trust_remote_code: true; fix: use a model transformers supports natively, "
                     "or read that code and set model.trust_remote_code: true"
                     for name in ("config.json", "tokenizer_config.json") if "auto_map" in _json_object(path / name)]
    if need_weights and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        problems.append(f"no weight files (*.safetensors or *.bin) in it; {fix}")
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    if chat and has_tokenizer and not _json_object(path / "tokenizer_config.json").get("chat_template") \
            and not any(path.glob("chat_template.*")):
        # Every prompt is rendered as a chat turn (training, eval, rewards): a base model without a template
        # would fail deep inside transformers at the first prompt.
        problems.append("its tokenizer has no chat template (no chat_template in tokenizer_config.json, no "
                        "chat_template.jinja), and ppo-align renders every prompt as a chat turn; fix: use an "
                        "instruct/chat model, or add a chat template to the tokenizer")
    return problems


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_source(source: str, what: str = "model.source", *, trust_remote_code: bool = False,
                       chat: bool = True) -> None:
    """Raise UserError if a local model ``source`` is missing, damaged, or would run its own code untrusted
    (embedded names and hub ids pass; transformers itself refuses a hub model's code unless trusted)."""
    if embedded.is_embedded_source(source):
        return
    path = Path(source).expanduser()
    if path.is_dir():
        problems = model_dir_problems(path, need_weights=True, trust_remote_code=trust_remote_code, chat=chat)
        if problems:
            raise UserError(*(f"{what} = {source!r}: {p}" for p in problems))
    elif path.exists():
        raise UserError(f"{what} = {source!r}: a file, not a model directory; fix: pass the directory that holds config.json")
    elif source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise UserError(f"{what} = {source!r}: no such directory; fix: check the path, or use a hub id or "
                        f"embedded:{next(iter(embedded.EMBEDDED_MODELS))}")


def resolve_model_dir(source: str) -> str:
    """Where transformers should load ``source`` from: a converted embedded model, a local dir, or a hub id."""
    if embedded.is_embedded_source(source):
        return str(embedded.ensure_embedded_model(source))
    path = Path(source).expanduser()
    return str(path) if path.is_dir() else source


def load_tokenizer(section: ModelSection, model_dir: str, *, for_training: bool = True):
    """The tokenizer with left padding (for batched generation) and, for training, a pad token distinct from eos.

    Evaluation builds its own attention masks, so it accepts pad == eos (or no pad: eos is used).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, revision=section.revision, trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError) as exc:  # missing files, or files transformers cannot make a tokenizer of
        raise UserError(f"model.source = {section.source!r}: cannot load its tokenizer ({str(exc).splitlines()[0][:200]}); "
                        "fix: point at a model directory with its tokenizer files (tokenizer.json or tokenizer_config.json)") from None
    if not for_training and section.pad_token is None:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return tokenizer
    if section.pad_token is not None:
        if section.pad_token not in tokenizer.get_vocab():
            raise UserError(f"model.pad_token = {section.pad_token!r}: not in the tokenizer's vocabulary; fix: use an existing token")
        tokenizer.pad_token = section.pad_token
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # TRL derives attention masks from the pad id: pad == eos would mask every end-of-turn token in prompts.
        raise UserError(
            f"model.source = {section.source!r}: the tokenizer's pad token is {tokenizer.pad_token!r}, the same as eos; "
            "fix: set model.pad_token to another token the tokenizer knows (one it never needs inside prompts)"
        )
    tokenizer.padding_side = "left"
    return tokenizer


def quantization_config(section: ModelSection):
    import torch
    from transformers import BitsAndBytesConfig

    q = section.quantization
    if not q.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        bnb_4bit_use_double_quant=q.double_quant,
    )


def lora_config(lora: Lora, task_type: str, model, modules_to_save: list[str] | None = None):
    """PEFT's LoraConfig for ``lora`` on the base ``model`` (whose layer count places ``last_layers``)."""
    from peft import LoraConfig

    targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    layers = None
    if lora.last_layers is not None:
        num_layers = model.config.num_hidden_layers
        layers = list(range(num_layers - check_layer_count("lora.last_layers", lora.last_layers, model.config), num_layers))
        if targets == "all-linear":  # PEFT takes a layer subset only with named modules
            targets = _decoder_linear_names(model)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
        layers_to_transform=layers,
        bias="none",
    )


def _decoder_linear_names(model) -> list[str]:
    """What "all-linear" means in PEFT: every linear layer inside the decoder, by its short name."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"})


def trainer_precision(section: ModelSection) -> dict:
    """TrainingArguments' mixed-precision flags. On a GPU, bf16/fp16 compute turns on autocast; on a CPU the
    4-bit layers already compute in ``compute_dtype`` and the adapters stay float32, so no autocast (which
    transformers refuses there anyway)."""
    import torch

    dtype = section.quantization.compute_dtype if torch.cuda.is_available() else "float32"
    return {"bf16": dtype == "bfloat16", "fp16": dtype == "float16"}


def keep_4bit_gradients_on_cpu(model) -> int:
    """Work around a silent no-learning trap of bitsandbytes on CPUs with AVX512-BF16.

    The first eval-mode forward through a ``Linear4bit`` repacks its weight for a
    fast kernel that has no autograd; from then on LoRA parameters get no gradient
    and backward only warns. PPO generates (eval mode) before it trains, so it
    would never learn. Disabling the repack keeps the autograd path, at about
    1.8x slower 4-bit generation (measured on SmolLM2-135M).

    Returns:
        How many 4-bit layers were switched.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    switched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def keep_trainable_dtype(model, section: ModelSection) -> None:
    """Undo TRL's cast of a quantized model's trainable parameters to bfloat16 (SFTTrainer, RewardTrainer).

    TRL follows the QLoRA paper's GPU recipe; with float32 compute (the CPU default) it makes the
    scalar head fail on float32 hidden states, and bfloat16 weights round away small optimizer steps.
    Call after building the trainer, before ``train()`` creates the optimizer.
    """
    import torch

    dtype = getattr(torch, section.quantization.compute_dtype)
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load(auto_class, section: ModelSection, model_dir: str, *, training: bool = True, **kwargs):
    import torch

    quant = quantization_config(section)
    try:
        model = auto_class.from_pretrained(
            model_dir,
            revision=section.revision,
            quantization_config=quant,
            dtype=torch.float32 if quant is None else getattr(torch, section.quantization.compute_dtype),
            trust_remote_code=section.trust_remote_code,
            **kwargs,
        )
    except OSError as exc:
        raise UserError(f"model.source = {section.source!r}: cannot load it ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise UserError(f"model.source = {section.source!r}: the model needs its own Python code, which ppo-align runs "
                        "only when the recipe says model.trust_remote_code: true; fix: use a model transformers "
                        "supports natively, or read that code and set model.trust_remote_code: true") from None
    if quant is not None:
        release_weight_file(model)
        if training:
            keep_4bit_gradients_on_cpu(model)
    return model


def release_weight_file(model) -> None:
    """Let go of the memory-mapped checkpoint file after a 4-bit load.

    The parameters bitsandbytes does not quantize (embeddings, norms) stay views of the mapped
    safetensors file, which keeps the whole file mapped and every page read during quantization
    resident: measured on SmolLM2-135M, policy + value held 0.95 GiB of file pages, 2x the file.
    Copying those few parameters out releases the mapping (resident 1.75 -> 0.82 GiB), and
    returning freed heap to the OS drops what quantizing left behind.
    """
    import ctypes
    import gc

    import bitsandbytes as bnb

    for param in model.parameters():
        if not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.clone()
    for buffer in model.buffers():
        buffer.data = buffer.data.clone()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the mapping is released anyway
        pass


def reuse_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 32 MB for reuse instead of handing each one back to the system.

    A forward pass on the CPU allocates and frees tensors of several MB per layer. By default glibc serves
    blocks this large with an mmap of their own and unmaps them when freed, so the next layer's tensors land
    on fresh pages the kernel must fault in and zero. Kept in the heap they are reused: eval generation on the
    embedded model ran 1.06x faster on 2 cores with a LoRA adapter (1.04x without), with the same tokens and
    log-probabilities (``benchmarks/freed_memory.py``). Free memory at the heap's top is still returned past 1 GiB.
    Does nothing where the C library is not glibc.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's parameter numbers
    mallopt(m_mmap_threshold, 32 << 20)  # the largest glibc accepts
    mallopt(m_trim_threshold, 1 << 30)


def load_for_inference(section: ModelSection, model_dir: str, tokenizer):
    """The base causal LM for evaluation: quantized as the recipe says, in eval mode, adapters added later.

    Skips the training-only bitsandbytes workaround: inference never needs gradients,
    and the repacked 4-bit kernel it would disable is the faster one.
    """
    from transformers import AutoModelForCausalLM

    model = _load(AutoModelForCausalLM, section, model_dir, training=False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def model_fingerprint(source: str, revision: str | None = None) -> str:
    """Identifies the base weights, so cached work (warm start, reward model, eval) is reused only for the same ones.

    Embedded: the GGUF's hash. A local directory: config.json and the content of every weight file (a model
    retrained in place is a new model). A hub id: the commit its revision resolves to in the local hub cache.
    """
    if embedded.is_embedded_source(source):
        return "gguf-sha256:" + embedded.fingerprint(embedded.locate_gguf(embedded.lookup(source)))
    path = Path(source).expanduser()
    if not path.is_dir():
        return f"hub:{source}@{_hub_commit(source, revision) or revision or 'main'}"
    files = [f for f in sorted(path.iterdir()) if f.name == "config.json" or f.suffix in {".safetensors", ".bin"}]
    return "dir-sha256:" + digest(*[f"{f.name}:{_content_hash(f)}" for f in files]).hexdigest()


def _hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit sha ``revision`` (default: main) points at in the local hub cache, without the network; None if
    the model has not been downloaded."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # an id the hub library rejects: the loader will say what is wrong with it
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def _content_hash(file: Path) -> str:
    """sha256 of a file's bytes, remembered by (path, size, modification time) in the cache directory: a multi-GB
    weight file is read once, not at every command, and a file rewritten in place is read again."""
    from ppo_align.files import write_json_atomic

    stat = file.stat()
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = embedded.cache_root() / "file-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        # Stays as small as the set of weight files that exist: older versions of this file and entries of deleted
        # files go when a new entry is written.
        memo = {k: v for k, v in memo.items()
                if k.rsplit("|", 2)[0] != key.rsplit("|", 2)[0] and Path(k.rsplit("|", 2)[0]).exists()}
        memo[key] = digest(files=[file]).hexdigest()
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(memo_path, memo)
        except OSError:
            pass  # a read-only cache only costs hashing again next time
    return memo[key]


REFERENCE_ADAPTER = "reference"
"""Name of the frozen warm-start adapter that serves as PPO's reference."""


def load_policy(section: ModelSection, model_dir: str, tokenizer, warm_start: Path | None = None, *,
                reference: bool = True):
    """The policy: 4-bit base + trainable LoRA adapter named "default".

    Without a warm start, the same object with its adapter disabled is the reference.
    With one, the policy adapter starts as a copy of the warm-start adapter, which is
    also loaded frozen as ``REFERENCE_ADAPTER``: the reference is then exactly the
    warm-started model on the same 4-bit base, and costs only a second small adapter.
    ``reference=False`` leaves that adapter out, for trainers that copy the starting
    adapter into a reference of their own (TRL's RLOO and GRPO).
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = _load(AutoModelForCausalLM, section, model_dir)
    base.config.pad_token_id = tokenizer.pad_token_id
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    if section.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    if warm_start is None:
        return get_peft_model(base, lora_config(section.lora, "CAUSAL_LM", base))
    policy = PeftModel.from_pretrained(base, str(warm_start), adapter_name="default", is_trainable=True)
    if not reference:
        return policy
    policy.load_adapter(str(warm_start), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    policy.set_adapter("default")  # also leaves only the active adapter trainable
    return policy


def check_layer_count(key: str, layers: int, model) -> int:
    """``layers`` if the model (a config, or a model directory) has that many decoder layers; a UserError otherwise."""
    if isinstance(model, (str, Path)):  # config.json read as data: a model with its own code is not run for this
        try:
            available = json.loads((Path(model) / "config.json").read_text()).get("num_hidden_layers")
        except (OSError, ValueError):
            available = None
    else:
        available = model.num_hidden_layers
    if available is not None and layers > available:
        raise UserError(f"{key} = {layers}: the model has only {available} decoder layers; "
                        f"fix: use at most {available}, or drop the key for every layer")
    return layers


def freeze_lower_layers(policy, trained_layers: int, adapter: str = "default") -> int:
    """Stop training ``adapter`` below the policy's last ``trained_layers`` decoder layers; return the layers frozen.

    Idempotent: PEFT's ``set_adapter`` makes the whole active adapter trainable again, so callers that switch
    adapters call this after switching back.
    """
    frozen = policy.config.num_hidden_layers - check_layer_count("ppo.train_last_layers", trained_layers, policy.config)
    for name, param in policy.named_parameters():
        layer = re.search(r"\.layers\.(\d+)\.", name)
        if layer and int(layer.group(1)) < frozen and f".{adapter}." in name:
            param.requires_grad_(False)
    return frozen


def load_value_model(section: ModelSection, lora: Lora | None, model_dir: str, tokenizer, reference: Path | None = None):
    """The value model: 4-bit base + LoRA + a trainable scalar head ("score").

    A full-precision copy would make each checkpoint carry a ~1 GB optimizer
    state for a 135M model; the LoRA value model's is a few MB.

    ``reference``, a warm-start adapter (``value.trunk: reference``): the value model is built on the reference
    model instead of the raw base. The adapter is loaded frozen as ``REFERENCE_ADAPTER`` and stays active under
    the value model's own, so wherever the value model has no adapter of its own, its layers compute exactly
    what the reference's do.
    """
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    base = load_scalar_model(section, model_dir, tokenizer)
    value = get_peft_model(base, lora_config(lora or section.lora, "SEQ_CLS", base, modules_to_save=["score"]))
    if reference is None:
        return value
    # PeftModel's add_adapter, not the sequence classifier's: that one would give the adapter a score head of its
    # own, which a causal-LM adapter file does not carry.
    PeftModel.add_adapter(value, REFERENCE_ADAPTER, LoraConfig.from_pretrained(str(reference)))
    set_peft_model_state_dict(value, load_file(Path(reference) / "adapter_model.safetensors"), REFERENCE_ADAPTER)
    for module in value.modules():
        if isinstance(module, LoraLayer):  # both active; a layer without the value's own adapter skips that one
            module.set_adapter(["default", REFERENCE_ADAPTER])
    for name, param in value.named_parameters():  # set_adapter made both trainable
        if f".{REFERENCE_ADAPTER}." in name:
            param.requires_grad_(False)
    return value


def load_scalar_model(section: ModelSection, model_dir: str, tokenizer, *, training: bool = True):
    """The base as a sequence classifier with one output (a fresh scalar head), quantized as the recipe says."""
    from transformers import AutoModelForSequenceClassification

    # The score head is new by design; transformers would report it as "MISSING" from the checkpoint.
    with _quiet("transformers.modeling_utils"):
        base = _load(AutoModelForSequenceClassification, section, model_dir, training=training, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    return base
