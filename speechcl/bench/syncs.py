"""Host round trips of one call: the points where the CPU waits for the device to read a value back.

A GPU step runs fastest when the host only queues work; every ``.item()``, ``bool(tensor)``,
``.tolist()``, ``nonzero`` or boolean-mask index on a GPU tensor makes it wait for everything queued so
far, so the GPU idles while the host catches up. :func:`count_syncs` lists them by source line:

- **CUDA**: torch's own detector (``torch.cuda.set_sync_debug_mode("warn")``), each warning traced to
  the innermost frame outside torch (speechcl's or transformers' line that asked);
- **CPU** (a proxy, for dry runs and tests): the operations that synchronise when their input lives on a
  GPU — ``_local_scalar_dense`` (``item``/``bool``/``int``/``float``), ``tolist``, ``nonzero``,
  ``masked_select``, boolean-mask indexing and ``repeat_interleave`` without ``output_size``. It also
  counts host-side bookkeeping on tensors that stay on the CPU in a GPU run, so it is an upper bound;
  reads inside ``torch.optim`` are left out (the CPU optimizer's per-parameter step counters, which a
  GPU's fused AdamW keeps on the device).
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_TORCH_DIR = os.path.dirname(torch.__file__)
_OPTIM_DIR = os.path.join(_TORCH_DIR, "optim")
_SELF = os.path.abspath(__file__)


def _site() -> str:
    """``path:line`` of the innermost frame outside torch and this module (path from ``speechcl/`` or the
    package's folder on)."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path.startswith(_TORCH_DIR) or path == _SELF or "/importlib/" in path or path.endswith("warnings.py"):
            continue
        parts = path.split(os.sep)
        for anchor in ("speechcl", "transformers", "tests", "tools"):
            if anchor in parts:
                path = os.sep.join(parts[len(parts) - parts[::-1].index(anchor) - 1:])
                break
        return f"{path}:{frame.lineno}"
    return "<torch>"


def _in_optimizer() -> bool:
    return any(os.path.abspath(frame.filename).startswith(_OPTIM_DIR) for frame in traceback.extract_stack())


class _DispatchSyncs(TorchDispatchMode):
    """Counts the aten operations that read device data back on the host (see the module docstring)."""

    def __init__(self, sites: Counter[str]) -> None:
        super().__init__()
        self.sites = sites

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        syncs = name in ("_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim",
                         "unique_consecutive")
        if name == "repeat_interleave":  # (the Tensor overload: what the others decompose into)
            syncs = kwargs.get("output_size") is None
        if name in ("index", "index_put", "index_put_") and len(args) > 1:
            syncs = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if syncs and not _in_optimizer():
            self.sites[_site()] += 1
        return func(*args, **kwargs)


class _FunctionSyncs(TorchFunctionMode):
    """Counts ``Tensor.tolist`` (which reads data without an aten operation on CPU tensors)."""

    def __init__(self, sites: Counter[str]) -> None:
        super().__init__()
        self.sites = sites

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__name__", "") == "tolist":
            self.sites[_site()] += 1
        return func(*args, **(kwargs or {}))


def count_syncs(fn: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """Host round trips of one call of ``fn`` on ``device`` (module docstring). Returns ``{"method",
    "total", "sites": [{"site", "count"}, ...]}``, the sites most frequent first."""
    sites: Counter[str] = Counter()
    if device.type == "cuda":
        method = "torch.cuda.set_sync_debug_mode('warn')"
        torch.cuda.synchronize(device)
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            original = warnings.showwarning

            def record(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
                if "synchroniz" in str(message):
                    sites[_site()] += 1
                else:
                    original(message, category, filename, lineno, *rest)

            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
                warnings.showwarning = original
    else:
        method = "CPU proxy: operations that synchronise on GPU tensors (an upper bound)"
        with _FunctionSyncs(sites), _DispatchSyncs(sites):
            fn()
    ranked = sorted(sites.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"method": method, "total": sum(sites.values()), "sites": [{"site": s, "count": c} for s, c in ranked]}
