"""Training logs on the main process: a tqdm progress bar, TensorBoard scalars and ``log.jsonl``
(one JSON object per logged interval, easy to grep and to test against)."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("speechcl.train")


class MetricLogger:
    def __init__(self, exp_dir: str | Path, enabled: bool = True, tensorboard: bool = True, total: int = 0,
                 start: int = 0) -> None:
        self.enabled = enabled
        self.exp_dir = Path(exp_dir)
        self.writer = None
        self.bar = None
        if not enabled:
            return
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.exp_dir / "log.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.exp_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; scalars go to log.jsonl only")
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, desc="updates", unit="upd", dynamic_ncols=True,
                        file=sys.stderr, disable=None)

    def progress(self, num_updates: int) -> None:
        if self.bar is not None:
            self.bar.update(num_updates - self.bar.n)

    def log(self, split: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self.jsonl.write(json.dumps({"split": split, "step": step, **clean}) + "\n")
        if self.writer is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self.writer.add_scalar(f"{split}/{k}", v, step)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in clean.items() if not k.endswith("_sum"))
        message = f"[{split}] update {step}: {shown}"
        if self.bar is not None and not self.bar.disable:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"split": "warning", "message": message}) + "\n")
        text = f"WARNING: {message}"
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.jsonl.close()


def _fmt(v: float) -> str:
    if v == 0 or (1e-3 <= abs(v) < 1e5):
        return f"{v:.4g}"
    return f"{v:.3e}"
