"""What every judge shares: the three labels, their accepted spellings, and the :class:`Judge` protocol."""

from __future__ import annotations

from typing import Literal, Protocol, Sequence, runtime_checkable

Label = Literal["comply", "refuse", "partial"]
LABELS: tuple[Label, ...] = ("comply", "partial", "refuse")

# Other spellings that classifier configs, services and users' gold files use for the three labels.
_LABEL_ALIASES: dict[str, Label] = {
    "comply": "comply", "complies": "comply", "complied": "comply", "compliance": "comply", "compliant": "comply",
    "partial": "partial", "partially": "partial", "hedge": "partial", "hedging": "partial", "hedged": "partial",
    "refuse": "refuse", "refuses": "refuse", "refused": "refuse", "refusal": "refuse",
}
LABEL_HINT = "comply, partial or refuse (also accepted, any case: compliance, hedge, refusal)"


def parse_label(value: object) -> Label | None:
    """The canonical label a spelling stands for ("Refusal" -> "refuse"), or None if it names none."""
    return _LABEL_ALIASES.get(str(value).strip().lower()) if isinstance(value, str) else None


@runtime_checkable
class Judge(Protocol):
    """Labels responses. ``name@version`` identifies the labels it gives, so caches key on it."""

    name: str
    version: str

    def label(self, prompts: list[str], responses: list[str]) -> list[Label]: ...

def check_batch(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up")
