"""Which process this is among several (torchrun, accelerate launch), or the only one, and how a command
is started again in several.

accelerate joins CPU processes over gloo only when told it is on CPU, and its state is a
singleton fixed by the first call, so every caller goes through :func:`process_state`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def process_state():
    """accelerate's ``PartialState`` for this process (a single-process state outside a launcher)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_worker_process() -> bool:
    """One of several processes other than the first (which is the one that reports).

    Read from the launcher's ``RANK`` variable rather than :func:`process_state`, so that asking does not import
    torch or accelerate (the CLI asks).
    """
    return int(os.environ.get("RANK", "0")) > 0


def relaunch_in_processes(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``ppo-align ARGV`` again in ``num_processes`` processes (accelerate launch on GPUs, torchrun on CPU),
    wait for them, and return the launcher's exit code.

    ``argv`` is the command line after the program name; ``--num-processes N`` (or ``=N``) is dropped from it, so
    each launched process runs the command as a single one of several.
    """
    import torch

    args, rest = [], iter(argv)
    for arg in rest:
        if arg == "--num-processes":
            next(rest, None)
        elif not arg.startswith("--num-processes="):
            args.append(arg)
    env = dict(os.environ)
    if torch.cuda.is_available() and torch.cuda.device_count() >= num_processes:
        launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        # accelerate's own launcher needs MPI for several CPU processes; torchrun (which it wraps for GPUs)
        # starts them directly, and accelerate then joins them with the gloo backend.
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes)]
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.run([sys.executable, *launcher, "-m", "ppo_align.cli", *args], env=env).returncode
