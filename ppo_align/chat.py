"""Chat rendering shared by training, evaluation and rewards: messages, template, left padding."""

from __future__ import annotations


def user_turn(text: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one prompt: the optional system message, then the user's."""
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": text}]


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat rendered with the model's template, ending with the assistant header."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already wrote every special token; adding BOS again would change the prompt.
    return tokenizer(text, add_special_tokens=False)["input_ids"]

def left_pad(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask
