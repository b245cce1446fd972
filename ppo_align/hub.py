"""What the Hugging Face libraries may fetch on their own: nothing the recipe did not name.

Applied once, when ``ppo_align`` is imported, before any of those libraries loads:

- usage telemetry (trainer start-ups) is off unless ``HF_HUB_DISABLE_TELEMETRY=0`` says otherwise;
- bitsandbytes never fetches its optional CPU kernel from the hub. On CPUs with AVX512-BF16,
  ``import bitsandbytes`` calls ``kernels.get_kernel("kernels-community/quantization-bitsandbytes")``
  whenever the ``kernels`` package is importable (transformers >= 5.25 installs it): a name lookup and
  a download at import time, and compiled code from the hub that no recipe asked for. With the lookup
  blocked, bitsandbytes uses the kernel in its own wheel, the one every measurement here was made on.

Hub model ids named in a recipe are untouched: only these two side channels are closed. If another
library imported bitsandbytes before ``ppo_align`` (a notebook that imported peft first), the
kernel lookup has already happened; import ``ppo_align`` first.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys

_BLOCKED_FOR_BITSANDBYTES = "kernels"


def keep_quiet() -> None:
    """Switch off telemetry and the hub kernel lookup of bitsandbytes (idempotent)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if "huggingface_hub.constants" in sys.modules and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1":
        sys.modules["huggingface_hub.constants"].HF_HUB_DISABLE_TELEMETRY = True  # imported before us (a notebook)
    if "bitsandbytes" not in sys.modules and not any(isinstance(f, _BitsandbytesFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _BitsandbytesFinder())


class _BitsandbytesFinder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as usual, but loads it with ``kernels`` unimportable.

    bitsandbytes asks for the hub kernel inside ``try: from kernels import get_kernel ... except
    Exception`` and falls back to its bundled kernel, so an unimportable ``kernels`` is exactly
    the "not installed" case it already handles. ``kernels`` is importable again right after.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "bitsandbytes":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _WithoutHubKernels(spec.loader)
                return spec
        return None


class _WithoutHubKernels(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # resource readers, is_package, get_code ...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        saved = sys.modules.get(_BLOCKED_FOR_BITSANDBYTES, _ABSENT)
        sys.modules[_BLOCKED_FOR_BITSANDBYTES] = None  # "import kernels" raises ImportError
        # bitsandbytes warns that the hub kernel failed to load; that is the point, so say nothing.
        cpu_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
        level = cpu_log.level
        cpu_log.setLevel(logging.ERROR)
        try:
            self._loader.exec_module(module)
        finally:
            cpu_log.setLevel(level)
            if saved is _ABSENT:
                sys.modules.pop(_BLOCKED_FOR_BITSANDBYTES, None)
            else:
                sys.modules[_BLOCKED_FOR_BITSANDBYTES] = saved


_ABSENT = object()
