"""Which process this is among several (torchrun, accelerate launch), or the only one.

accelerate joins CPU processes over gloo only when told it is on CPU, and its state is a
singleton fixed by the first call, so every caller goes through here.
"""

from __future__ import annotations


def process_state():
    """accelerate's ``PartialState`` for this process (a single-process state outside a launcher)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
