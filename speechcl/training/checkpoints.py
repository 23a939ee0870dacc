"""Training checkpoints: ``<exp>/checkpoints/<tag>/`` with ``config.json``, ``model.safetensors`` and
``trainer_state.pt`` (optimizer, scheduler, scaler, sampler position, RNG states, step — plain tensors and
numbers, loaded with ``weights_only=True``).

Tags: ``last`` (every save), ``best`` (best validation score), ``step_<N>`` (every N updates, the newest
``keep_last`` kept). A checkpoint directory is written beside its final place and swapped in with
renames, so an interruption leaves either the old or the new checkpoint, never a mix.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from speechcl.models.checkpoint import dcp_error_reason, load_state_strict, read_safetensors, save_checkpoint
from speechcl.training.distributed import DistInfo, barrier

STATE_NAME = "trainer_state.pt"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, I/O error); the previous one is left as it was."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_to_tuple(v) for v in value)
    return value


class CheckpointManager:
    """Saves and finds training checkpoints under ``<exp_dir>/checkpoints``."""

    def __init__(self, exp_dir: str | Path, keep_last: int = 2) -> None:
        self.root = Path(exp_dir) / "checkpoints"
        self.keep_last = keep_last

    def path(self, tag: str) -> Path:
        return self.root / tag

    def _recover(self, tag: str) -> None:
        """Finish a swap interrupted between its two renames; drop temporaries of killed saves."""
        old = self.root / f".old-{tag}"
        if old.exists():
            if self.path(tag).exists():
                shutil.rmtree(old)
            else:
                os.replace(old, self.path(tag))
        for tmp in self.root.glob(f".tmp-{tag}-*"):
            if tmp.name != f".tmp-{tag}-{os.getpid()}":
                shutil.rmtree(tmp, ignore_errors=True)

    def exists(self, tag: str) -> bool:
        self._recover(tag)
        return (self.path(tag) / STATE_NAME).exists()

    def save(self, tag: str, model: nn.Module, state: dict[str, Any], extra_config: dict[str, Any] | None = None
             ) -> Path:
        """Write ``model`` and ``state`` as checkpoint ``tag`` (atomic directory swap)."""
        self.root.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            save_checkpoint(model, tmp, extra=extra_config)
            torch.save(state, tmp / STATE_NAME)

        previous = f"the previous one in {self.path(tag)} is intact" if self.path(tag).exists() else \
            "there is no earlier one"
        return self._write(tag, write, f"cannot write checkpoint {self.path(tag)}", previous)

    def save_sharded(self, tag: str, model: nn.Module, state: dict[str, Any], write_shards: Callable[[Path], object],
                     info: DistInfo, weights: dict[str, torch.Tensor] | None = None,
                     extra_config: dict[str, Any] | None = None) -> None:
        """Every rank calls it: ``write_shards(tmp)`` on every rank (DCP shards of an FSDP model), then the main
        process adds ``config.json``, ``trainer_state.pt`` (``state``) and, given the gathered ``weights``,
        ``model.safetensors``, and swaps the folder in as checkpoint ``tag``. The folder must be on a file system
        every rank sees."""
        tmp = self.root / f".tmp-{tag}-sharded"
        if info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._recover(tag)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier(info)
        try:
            write_shards(tmp)
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP's (a BaseException) for a failed write on any rank
            if info.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(f"cannot write the sharded checkpoint {self.path(tag)} ({dcp_error_reason(err)}); the previous "
                                       "one is intact: free space or fix the file system, then rerun the same command "
                                       "to resume") from err
        if info.is_main:
            def write(folder: Path) -> None:
                save_checkpoint(model, folder, extra=extra_config, state=weights, weights=weights is not None)
                torch.save(state, folder / STATE_NAME)

            self._write(tag, write, f"cannot write checkpoint {self.path(tag)}", "the previous one is intact",
                        tmp=tmp)
        barrier(info)

    def copy(self, src: str, dst: str) -> None:
        """Make checkpoint ``dst`` a copy of ``src`` (e.g. ``best`` from ``last``), atomically."""
        self._write(dst, lambda tmp: shutil.copytree(self.path(src), tmp),
                    f"cannot copy checkpoint {self.path(src)} to {self.path(dst)}", "both are as they were")

    def _write(self, tag: str, write: Callable[[Path], object], failed: str, kept: str, tmp: Path | None = None
               ) -> Path:
        """``write`` a new checkpoint folder beside ``tag`` and swap it in with two renames. A write that
        fails (disk full, I/O error, quota) leaves ``tag`` as it was and raises :class:`CheckpointWriteError`
        with ``failed`` and ``kept`` in its message. ``tmp``: a folder already holding part of the checkpoint
        (the sharded save's), written into instead of a fresh one."""
        if tmp is None:
            self._recover(tag)  # a leftover .old-<tag> is finished first: it may be the only complete copy
            tmp = self.root / f".tmp-{tag}-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
        try:
            write(tmp)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(f"{failed} ({err.strerror or err}); {kept}: free space or fix the file "
                                       "system, then rerun the same command to resume") from err
        target, old = self.path(tag), self.root / f".old-{tag}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
        return target

    def prune(self) -> None:
        """Keep the newest ``keep_last`` ``step_*`` checkpoints."""
        steps = sorted((int(m.group(1)), p) for p in self.root.glob("step_*")
                       if (m := re.fullmatch(r"step_(\d+)", p.name)))
        for _, p in steps[: max(len(steps) - self.keep_last, 0)]:
            shutil.rmtree(p)

    def load_state(self, tag: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The trainer state of checkpoint ``tag`` (not the weights)."""
        self._recover(tag)
        state_path = self.path(tag) / STATE_NAME
        try:
            return torch.load(state_path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {self.path(tag)} is incomplete (no {STATE_NAME})") from None
        except Exception as err:  # noqa: BLE001 - report which file and why
            raise ValueError(f"cannot read {state_path}: {err}") from err

    def load(self, tag: str, model: nn.Module, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load weights into ``model`` and return the trainer state of checkpoint ``tag``."""
        self._recover(tag)
        directory = self.path(tag)
        weights = directory / "model.safetensors"
        state_path = directory / STATE_NAME
        if not weights.exists() or not state_path.exists():
            raise FileNotFoundError(f"checkpoint {directory} is incomplete (needs model.safetensors and {STATE_NAME})")
        load_state_strict(model, read_safetensors(weights, map_location), str(weights))
        return self.load_state(tag, map_location)
