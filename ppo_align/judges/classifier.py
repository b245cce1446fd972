"""A judge backed by a local transformers sequence-classification model directory."""

from __future__ import annotations

import json
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.files import file_sha256
from ppo_align.judges.base import LABEL_HINT, LABELS, Label, check_batch, parse_label
from ppo_align.models import safetensors_problem

# --------------------------------------------------------------------------- classifier judge

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


class ClassifierJudge:
    """A local transformers sequence-classification model that reads (prompt, response) pairs.

    Its ``config.json`` ``id2label`` must name the three labels (any case; refusal/compliance/hedge
    accepted). Runs batched on the CPU without gradients; the model loads on the first call.

    Args:
        path: the model directory (config, weights and tokenizer, as ``save_pretrained`` writes them).
        batch_size: pairs per forward pass.
        max_length: tokens per pair; longer pairs are truncated, the longer of prompt and response first.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 16, max_length: int = 512):
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise UserError(f"judge {str(path)!r}: no config.json in this directory; "
                            "fix: point at a directory written by save_pretrained()")
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"judge {str(path)!r}: config.json is not valid JSON ({exc}); "
                            "fix: re-save the model with save_pretrained()") from None
        if "auto_map" in config:  # transformers would import the directory's own Python code
            raise UserError(f"judge {str(path)!r}: config.json asks to run the model's own Python code (auto_map), "
                            "which ppo-align never does for a judge; fix: use a classifier transformers supports natively")
        self.id2label = self._labels(config.get("id2label") or {})
        weights = next((self.path / f for f in _WEIGHT_FILES if (self.path / f).is_file()), None)
        if weights is None:
            raise UserError(f"judge {str(path)!r}: no weights ({', '.join(_WEIGHT_FILES[:2])}); "
                            "fix: save the model with save_pretrained()")
        problem = safetensors_problem(weights) if weights.suffix == ".safetensors" else None
        if problem:  # found now, in one line, rather than as safetensors' own error at the first label()
            raise UserError(f"judge {str(path)!r}: {problem}; fix: save the model again with save_pretrained()")
        self.name = f"classifier:{self.path.resolve().name}"
        self.version = file_sha256(weights)[:12]
        self.batch_size, self.max_length = batch_size, max_length
        self._model = self._tokenizer = None

    def _labels(self, id2label: dict) -> dict[int, Label]:
        mapped = {int(i): parse_label(name) for i, name in id2label.items() if str(i).lstrip("-").isdigit()}
        if len(mapped) != len(id2label) or set(mapped.values()) != set(LABELS):
            found = ", ".join(f"{i}: {n!r}" for i, n in id2label.items()) or "none"
            raise UserError(f"judge {str(self.path)!r}: config id2label ({found}) must map onto {LABEL_HINT}; "
                            'fix: set id2label to e.g. {0: "comply", 1: "partial", 2: "refuse"} in config.json')
        return mapped

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path)
            except (OSError, ValueError) as exc:
                raise UserError(f"judge {str(self.path)!r}: cannot load its tokenizer ({exc}); "
                                "fix: save the tokenizer next to the model") from None
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            model = AutoModelForSequenceClassification.from_pretrained(self.path).to("cpu").eval()
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            self._tokenizer, self._model = tokenizer, model
        return self._tokenizer, self._model

    def label(self, prompts: list[str], responses: list[str]) -> list[Label]:
        import torch

        check_batch(prompts, responses)
        tokenizer, model = self._load()
        labels: list[Label] = []
        with torch.no_grad():
            for start in range(0, len(responses), self.batch_size):
                batch = tokenizer(list(prompts[start:start + self.batch_size]), list(responses[start:start + self.batch_size]),
                                  truncation="longest_first", max_length=self.max_length, padding=True, return_tensors="pt")
                batch.pop("token_type_ids", None)
                ids = model(**batch).logits.argmax(dim=-1).tolist()
                labels += [self.id2label[i] for i in ids]
        return labels

    def __repr__(self) -> str:
        return f"ClassifierJudge({str(self.path)!r}, version={self.version!r})"
