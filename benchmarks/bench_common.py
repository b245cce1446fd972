"""What every benchmark records next to its numbers: where and when it ran, written atomically."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ppo_align.files import write_json_atomic


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_result(path: str | Path, result: dict) -> None:
    write_json_atomic(Path(path), result, indent=2)
