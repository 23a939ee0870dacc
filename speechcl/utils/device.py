"""Which device a command runs on: the one rule every verb and the trainer apply to a device name."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch


def resolve_device(name: str, flag: str = "--device",
                   environ: Mapping[str, str] = os.environ) -> torch.device:
    """The device named by ``name``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is ``cuda`` when a GPU is available, else ``cpu``. A bare ``cuda`` (given or chosen by
    ``auto``) under torchrun is the GPU of this process, ``cuda:$LOCAL_RANK``.

    Args:
        name: the device name the user gave.
        flag: how the user sets it (``--device``, ``trainer.device``), named in the error messages.
        environ: where ``LOCAL_RANK`` is read (the process environment).

    Raises:
        ValueError: an unknown name, or a CUDA device on a machine without CUDA.
    """
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{flag}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag}={name!r}: only cpu and cuda devices are supported; "
                         "use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag}={name!r} but CUDA is not available on this machine; "
                         f"use {flag}=cpu (or auto)")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in environ:
        device = torch.device("cuda", int(environ["LOCAL_RANK"]))
    return device


def default_threads() -> int:
    """CPUs available to this process, shared among torchrun's processes on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
