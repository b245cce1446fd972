"""Training prompts: load a data file or dataset, apply the chat template, tokenize, and
remember which token ids belong to which row so rewards can see its metadata."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ppo_align.chat import encode_chat, user_turn
from ppo_align.data import read_data
from ppo_align.errors import UserError
from ppo_align.recipe.schema import Recipe

log = logging.getLogger(__name__)


@dataclass
class PromptRow:
    text: str
    metadata: dict


class PromptLookup:
    """Maps the token ids of a rollout back to (prompt row, response ids).

    TRL hands reward models only token ids: prompt and response concatenated.
    The split is found by *token position* — the longest known prompt that
    prefixes the row — never by searching decoded text for chat markers,
    which breaks when a sampled response itself starts a new chat turn.
    """

    def __init__(self, ids: list[list[int]], rows: list[PromptRow]):
        self._by_ids = {tuple(i): row for i, row in zip(ids, rows)}
        self._lengths = sorted({len(i) for i in ids}, reverse=True)

    def row(self, prompt_ids: list[int]) -> PromptRow:
        return self._by_ids[tuple(prompt_ids)]

    def split(self, tokens: list[int]) -> tuple[PromptRow, list[int]]:
        for length in self._lengths:
            row = self._by_ids.get(tuple(tokens[:length]))
            if row is not None:
                return row, tokens[length:]
        raise KeyError("a rollout does not start with any training prompt")


@dataclass
class PromptSet:
    input_ids: list[list[int]]
    lookup: PromptLookup
    dropped_too_long: int

    def hold_out(self, count: int, seed: int) -> tuple["PromptSet", "PromptSet"]:
        """(the rest, about ``count`` held-out prompts), drawn evenly across ``expected`` values, fixed by ``seed``.

        A prompt with a ``contrast_id`` is held out with its twin, so the monitor can tell whether pairs are told
        apart, and PPO never trains on one half of a pair the monitor asks about.
        """
        import random

        rows = [self.lookup.row(ids) for ids in self.input_ids]
        index_of = {row.metadata.get("id"): i for i, row in enumerate(rows) if row.metadata.get("id") is not None}
        groups: dict = {}
        for i, row in enumerate(rows):
            groups.setdefault(str(row.metadata.get("expected")), []).append(i)
        rng = random.Random(seed)
        for members in groups.values():
            rng.shuffle(members)
        queues = [groups[key] for key in sorted(groups)]
        held: dict[int, None] = {}
        while len(held) < min(count, len(rows) - 1) and any(queues):
            for queue in queues:
                while queue and queue[-1] in held:
                    queue.pop()
                if queue and len(held) < count:
                    i = queue.pop()
                    held[i] = None
                    twin = index_of.get(rows[i].metadata.get("contrast_id"))
                    if twin is not None:
                        held[twin] = None
        kept = [i for i in range(len(rows)) if i not in held]

        def subset(indices):
            ids = [self.input_ids[i] for i in indices]
            return PromptSet(ids, PromptLookup(ids, [rows[i] for i in indices]), self.dropped_too_long)

        return subset(kept), subset(sorted(held))

    def column(self, name: str) -> list[str]:
        """Each prompt's value of a data column, as text (missing: "None")."""
        return [str(self.lookup.row(ids).metadata.get(name)) for ids in self.input_ids]

    def dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids})

def load_prompts(recipe: Recipe, tokenizer) -> PromptSet:
    """Read ``data.prompts``, render each prompt with the chat template, and tokenize it."""
    data = recipe.data
    source = read_data(recipe, data.prompts, "data.prompts")
    table = [row for _, row in source.rows]
    columns = sorted({key for row in table for key in row})
    if data.prompt_field not in columns:
        raise UserError(
            f"data.prompt_field = {data.prompt_field!r}: {source.label} has no such column "
            f"(columns: {', '.join(columns)}); fix: set data.prompt_field"
        )
    ids, rows, seen, dropped = [], [], set(), 0
    for record in table:
        text = record.get(data.prompt_field)
        if not isinstance(text, str) or not text.strip():
            continue
        token_ids = encode_chat(tokenizer, user_turn(text, data.system_prompt))
        if len(token_ids) > data.max_prompt_length:
            dropped += 1
            continue
        if tokenizer.pad_token_id in token_ids:
            raise UserError(f"data.prompts: prompt {text[:40]!r} contains the pad token; fix: choose another model.pad_token")
        if tuple(token_ids) in seen:
            continue  # duplicates would make metadata ambiguous; samples_per_prompt repeats on purpose
        seen.add(tuple(token_ids))
        ids.append(token_ids)
        rows.append(PromptRow(text=text, metadata={k: v for k, v in record.items() if k != data.prompt_field}))
    if dropped:
        log.warning("dropped %d prompts longer than data.max_prompt_length = %d tokens", dropped, data.max_prompt_length)
    if len(ids) < 1:
        raise UserError(f"data.prompts = {data.prompts!r}: no usable prompts; fix: check the file and data.max_prompt_length")
    if data.balance_by is not None and data.balance_by not in columns:
        raise UserError(f"data.balance_by = {data.balance_by!r}: {source.label} has no such column "
                        f"(columns: {', '.join(columns)}); fix: name one of them or drop the key")
    return PromptSet(input_ids=ids, lookup=PromptLookup(ids, rows), dropped_too_long=dropped)
