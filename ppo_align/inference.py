"""Batched generation and teacher-forced scoring for the eval harness (the trainers share its prompt pass).

Two kinds of passes over a loaded model:

* :func:`generate` — responses for many prompts: prompts sorted by length and
  cut into batches (so little padding is wasted), left-padded, greedy by
  default, optionally several sampled responses per prompt with fixed seeds.
  Each prompt's encoding is reused to score given continuations of it (refusal
  and compliance openers, a knowledge answer), so those cost no second pass
  over the prompt.
* :func:`score` — teacher-forced log-probabilities of given continuations,
  optionally with the exact KL to the reference at every token, summed over the
  continuation, computed on the same loaded model with its adapters switched off.
"""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

from ppo_align.chat import left_pad
from ppo_align.models import REFERENCE_ADAPTER

Progress = Callable[[int], None]
"""Called with the number of prompts just finished."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    batch_size: int = 64
    samples: int = 0
    """Sampled responses per prompt besides the greedy one (0: greedy only)."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generated:
    response_ids: list[int]
    """Greedy response tokens, cut at the first end-of-turn token (which is not included)."""
    text: str
    samples: list[str]
    """Sampled responses (empty unless ``samples`` > 0)."""
    scored: "Scored | None" = None
    """The greedy response's log-prob, entropy and KL (with ``score_responses``)."""
    continuation_logprobs: list[float] = field(default_factory=list)
    """log P(continuation | prompt) for each of the prompt's ``continuations``, in their order."""


_BATCH_INPUTS = ("input_ids", "attention_mask", "position_ids", "inputs_embeds")


@contextmanager
def distinct_prompt_pass(model):
    """Context in which ``model.generate`` encodes each distinct prompt of a batch once.

    PPO's rollout batch holds every prompt ``samples_per_prompt`` times (and ``num_return_sequences`` repeats
    each prompt), and generate's first pass encodes every row: on a CPU that prompt pass is about a third of a
    rollout's generation at the default shape. Here the first pass runs on one row per distinct prompt (tokens
    and mask), and its cache and logits are copied to the repeats. Rows of a batch are computed independently,
    so generation is the same, bit for bit, as without it (tested).
    """
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = inner.__dict__.get("forward")
    forward = inner.forward

    @functools.wraps(forward)  # generate reads the forward's signature to decide which inputs to pass
    def encode_once(*args, **kwargs):
        ids, mask, cache = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("cache")
        if (args or ids is None or ids.shape[1] < 2 or cache is None or cache.get_seq_length() > 0
                or (mask is not None and mask.dim() != 2)):
            return forward(*args, **kwargs)  # not a prompt pass
        rows_as_given = ids if mask is None else torch.cat([ids, mask.to(ids.dtype)], 1)  # no mask: no padding
        distinct, copies = torch.unique(rows_as_given, dim=0, return_inverse=True)
        if len(distinct) == len(ids):
            return forward(**kwargs)
        rows = torch.arange(len(ids))
        first = torch.full((len(distinct),), len(ids)).scatter_reduce(0, copies, rows, "amin")
        output = forward(**{key: value[first] if key in _BATCH_INPUTS and value is not None else value
                            for key, value in kwargs.items()})
        cache.batch_select_indices(copies)
        output.logits = output.logits[copies]  # generate reads the logits and the cache of a prompt pass
        return output

    inner.forward = encode_once
    try:
        yield
    finally:
        if own is None:
            del inner.forward
        else:
            inner.forward = own


@contextmanager
def reference_mode(model):
    """Context in which ``model`` is the reference: the "reference" adapter active if it has one, else
    every PEFT adapter disabled (a plain model is its own reference)."""
    adapters = getattr(model, "peft_config", {})
    if REFERENCE_ADAPTER in adapters:
        active = model.active_adapter
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter(active)
    elif adapters:
        with model.disable_adapter():
            yield
    else:
        yield


def _buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks show up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _cut(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i]
    return tokens


@dataclass
class Scored:
    logprob: float
    """Sum of log P(token) over the continuation."""
    entropy: float | None = None
    """Mean next-token entropy along the continuation (nats)."""
    kl: float | None = None
    """Sum over the continuation of the exact next-token KL(model || reference) (nats)."""


class ReferencePrompts:
    """The reference's encoding of each batch of prompts (key/value cache and next-token log-probabilities),
    kept from the reference's own generation so that a checkpoint's KL pass on the same batch runs over its
    response tokens alone instead of encoding the prompts again.

    Batches are keyed by their prompts: the harness evaluates the reference first, on the same prompts and
    batch size as each checkpoint. Past ``max_bytes`` nothing more is kept, and a batch without an entry has
    its prompts encoded under the reference again before the response pass (the same numbers, more work).
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes, self.bytes = max_bytes, 0
        self._kept: dict[tuple, tuple] = {}

    def keep(self, prompts: list[list[int]], cache, first_logp, mask) -> None:
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
            return  # not a plain key/value cache: nothing to reuse safely
        size = first_logp.numel() * first_logp.element_size() + sum(
            t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
        if self.bytes + size > self.max_bytes:
            return
        for layer in layers:  # copies: the cut-back views would keep the generated tokens' memory alive
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
        self._kept[_batch_key(prompts)] = (cache, first_logp, mask)
        self.bytes += size

    def get(self, prompts: list[list[int]]) -> tuple | None:
        """(cache, next-token log-probabilities, prompt mask) of this batch of prompts, if kept."""
        return self._kept.get(_batch_key(prompts))


def _batch_key(prompts: list[list[int]]) -> tuple:
    return tuple(map(tuple, prompts))


def generate(model, tokenizer, prompts: list[list[int]], settings: GenerationSettings, *,
             score_responses: bool = False, with_reference: bool = False,
             continuations: list[list[list[int]]] | None = None,
             reference_prompts: ReferencePrompts | None = None,
             progress: Progress | None = None) -> list[Generated]:
    """Responses to tokenized prompts, in the order given.

    With ``score_responses``, each greedy response also gets its :class:`Scored` numbers
    (log-prob, entropy and, ``with_reference``, the exact KL to the reference), taken from
    the logits generation computes anyway: only the reference's side needs a pass (over the
    response tokens alone when ``reference_prompts`` holds the batch), which runs right after
    each batch so the kept logits never outlive it.

    ``continuations[i]`` lists token sequences to score after prompt ``i`` (none, one or several;
    the results land in :attr:`Generated.continuation_logprobs`). They run on generation's own
    key/value cache cut back to the prompt, so the prompt is encoded once for everything.

    ``reference_prompts``: when this is the reference's generation (``with_reference`` off), each batch's
    prompt encoding is kept there; when it is a checkpoint's, the KL pass reuses the kept ones.
    """
    import torch

    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[Generated | None] = [None] * len(prompts)
    common = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id, eos_token_id=sorted(stop_ids))
    for number, batch in enumerate(_buckets([len(p) for p in prompts], settings.batch_size)):
        batch_prompts = [prompts[i] for i in batch]
        ids, mask = left_pad(batch_prompts, pad_id)
        wanted = [continuations[i] for i in batch] if continuations and any(continuations[i] for i in batch) else None
        keep = reference_prompts is not None and not with_reference
        with torch.inference_mode():
            greedy = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                                    output_logits=score_responses or bool(wanted) or keep, **common)
            continued = None
            if wanted or keep:
                cache = greedy.past_key_values
                _cut_back(cache, ids.shape[1])  # to the prompts alone
                first_logp = torch.log_softmax(greedy.logits[0].float(), dim=-1)
                if wanted:
                    continued = _continuation_logprobs(model, cache, first_logp, mask, wanted, pad_id)
                if keep:
                    reference_prompts.keep(batch_prompts, cache, first_logp, mask)
            sampled = None
            if settings.samples:
                # One seed per batch: batches are fixed by the prompts and settings, so runs repeat exactly.
                torch.manual_seed(settings.seed + number)
                with distinct_prompt_pass(model):  # num_return_sequences repeats each prompt
                    sampled = model.generate(
                        input_ids=ids, attention_mask=mask, do_sample=True, temperature=settings.temperature,
                        top_p=settings.top_p, top_k=0, num_return_sequences=settings.samples, **common,
                    )
        width = ids.shape[1]
        responses = [_cut(greedy.sequences[row, width:].tolist(), stop_ids) for row in range(len(batch))]
        kept = reference_prompts.get(batch_prompts) if reference_prompts is not None and with_reference else None
        scores = _score_generated(model, tokenizer, ids, mask, responses, greedy.logits, with_reference,
                                  kept) if score_responses else [None] * len(batch)
        for row, index in enumerate(batch):
            samples = []
            if sampled is not None:
                for s in range(settings.samples):
                    tokens = _cut(sampled[row * settings.samples + s, width:].tolist(), stop_ids)
                    samples.append(tokenizer.decode(tokens, skip_special_tokens=True))
            out[index] = Generated(responses[row], tokenizer.decode(responses[row], skip_special_tokens=True),
                                   samples, scores[row], continued[row] if continued else [])
        if progress:
            progress(len(batch))
    return out  # type: ignore[return-value]


def _score_generated(model, tokenizer, ids, mask, responses, step_logits, with_reference: bool,
                     kept: tuple | None = None) -> list[Scored]:
    """Scores of freshly generated responses from generation's own logits (one per step, for the whole batch).

    The KL needs the reference's log-probabilities along each response. They always come the same way, so
    the numbers do not depend on what was kept: the reference's encoding of the prompts (``kept``, from its
    own generation, or encoded here from ``ids`` and ``mask``), then one pass over the response tokens.
    """
    import torch

    reference = None  # per row: the reference's log-probabilities predicting each response token
    tail = max(len(r) for r in responses)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if with_reference and tail:
        with torch.inference_mode(), reference_mode(model):
            cache, first_logp, mask = kept if kept is not None else (*_encode_prompts(model, ids, mask), mask)
            after = _run_on_prompts(model, _fork(cache), mask, [r[:-1] for r in responses], pad_id) if tail > 1 else None
            reference = [torch.cat([first_logp[row, None], after[row, :len(r) - 1]]) if after is not None
                         else first_logp[row, None] for row, r in enumerate(responses)]
    scored = []
    for row, response in enumerate(responses):
        n = len(response)
        if n == 0:
            scored.append(Scored(0.0, None, 0.0 if with_reference else None))
            continue
        logp = torch.log_softmax(torch.stack([step[row] for step in step_logits[:n]]).float(), dim=-1)
        scored.append(_scored(logp, torch.tensor(response), None if reference is None else reference[row]))
    return scored


def _scored(logp, tokens, ref_logp) -> Scored:
    """One response's numbers from its per-position log-probabilities (n x vocab) and its n tokens.

    The KL is the full-vocabulary divergence at every position from the reference's log-probabilities:
    exact, not a sampled estimate, so it is never negative (clamped against rounding).
    """
    token_logp = logp.gather(-1, tokens[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    kl = None if ref_logp is None else float((logp.exp() * (logp - ref_logp)).sum(-1).clamp_min(0).sum())
    return Scored(float(token_logp.sum()), float(entropy.mean()), kl)


def score(model, tokenizer, prompts: list[list[int]], continuations: list[list[int]], *, batch_size: int = 16,
          with_reference: bool = False, progress: Progress | None = None) -> list[Scored]:
    """Teacher-forced scores of ``continuations[i]`` after ``prompts[i]``.

    With ``with_reference``, the same batch is run again with adapters disabled
    and the KL is the full-vocabulary divergence at every continuation
    position — exact, not a sampled estimate, so it is never negative.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[Scored | None] = [None] * len(prompts)
    lengths = [len(p) + len(c) for p, c in zip(prompts, continuations)]
    for batch in _buckets(lengths, batch_size):
        ids, mask = left_pad([prompts[i] + continuations[i] for i in batch], pad_id)
        tail = max(len(continuations[i]) for i in batch)
        with torch.inference_mode():
            logp = _tail_log_probs(model, ids, mask, tail)
            ref_logp = None
            if with_reference:
                with reference_mode(model):
                    ref_logp = _tail_log_probs(model, ids, mask, tail)
        width = ids.shape[1]
        for row, index in enumerate(batch):
            n = len(continuations[index])
            if n == 0:
                out[index] = Scored(0.0, None, 0.0 if with_reference else None)
                continue
            # Continuations are right-aligned (left padding): theirs are the last n predictions.
            out[index] = _scored(logp[row, tail - n:], ids[row, width - n:],
                                 None if ref_logp is None else ref_logp[row, tail - n:])
        if progress:
            progress(len(batch))
    return out  # type: ignore[return-value]


def _continuation_logprobs(model, cache, first_logp, mask, wanted: list[list[list[int]]], pad_id: int) -> list[list[float]]:
    """log P(continuation | prompt) for each row's continuations, run on ``cache`` (the rows' left-padded prompts).

    ``first_logp`` is the next-token distribution after each prompt (it scores every continuation's first
    token). Round j scores every row's j-th continuation in one pass.
    """
    import torch

    out: list[list[float]] = [[] for _ in range(mask.shape[0])]
    for j in range(max(len(w) for w in wanted)):
        tokens = [w[j] if j < len(w) else [] for w in wanted]
        # A token's log-prob comes from the position before it: the first from first_logp, the rest need a pass.
        logp = _run_on_prompts(model, cache, mask, [t[:-1] for t in tokens], pad_id) if max(map(len, tokens)) > 1 else None
        for row, t in enumerate(tokens):
            if t:
                total = first_logp[row, t[0]]
                if len(t) > 1:
                    total = total + logp[row, torch.arange(len(t) - 1), torch.tensor(t[1:])].sum()
                out[row].append(float(total))
    return out


def _run_on_prompts(model, cache, mask, fed: list[list[int]], pad_id: int):
    """Next-token log-probabilities after each token ``fed`` to each row (rows x longest x vocab), run on ``cache``
    (the rows' left-padded prompts, ``mask``), which is then cut back to the prompts. Rows are right-padded."""
    import torch

    width, longest = mask.shape[1], max(len(f) for f in fed)
    start = _positions(mask)[:, -1:] + 1  # each row's first position after its prompt
    inputs = torch.tensor([f + [pad_id] * (longest - len(f)) for f in fed])
    valid = torch.tensor([[1] * len(f) + [0] * (longest - len(f)) for f in fed])
    step = model(input_ids=inputs, attention_mask=torch.cat([mask, valid], dim=1),
                 position_ids=start + torch.arange(longest), past_key_values=cache, use_cache=True)
    _cut_back(cache, width)
    return torch.log_softmax(step.logits.float(), dim=-1)


def _positions(mask):
    """Each token's position, counted over the attention mask as generation counts it, so left padding does
    not shift them (padding positions get 0)."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def _encode_prompts(model, ids, mask):
    """The key/value cache of left-padded prompts and the next-token log-probabilities after each: the same
    numbers as generation's own first step."""
    import torch

    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
    return out.past_key_values, torch.log_softmax(out.logits[:, -1].float(), dim=-1)


def _fork(cache):
    """A cache sharing the kept tensors but not their holders: a forward on it (which rebinds each layer's keys and
    values to longer tensors) leaves the kept cache as it was."""
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def _cut_back(cache, length: int) -> None:
    """Drop the cache's positions after the first ``length`` (transformers crops by a negative count only)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _tail_log_probs(model, ids, mask, tail: int):
    """Log-probabilities predicting the last ``tail`` tokens of each row (logits at t predict token t + 1)."""
    import torch

    # Only the continuation's positions: the vocabulary projection and softmax over the prompt
    # too would cost a large share of the forward and GBs of memory.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=tail + 1).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)
