"""The shared base of the pretraining methods beside wav2vec 2.0 (``objective=<name>``).

A method is a small :class:`Method` subclass: the shared :class:`~speechcl.models.wav2vec2.Wav2Vec2Encoder`
(``self.encoder``, built here from the model config) plus the method's own heads, and for momentum methods
its EMA teacher, queue or memory bank as submodules and buffers, so ``model.safetensors`` saves them and a
resumed run restores them. Its loss is a pure function of tensors in :mod:`speechcl.objectives` (a file of
the same name). What a method implements:

- ``Config``: a dataclass of its hyperparameters (the ``objective:`` config section minus ``name``),
  each default named with its source;
- :meth:`Method.forward` ``(batch, generator, augment) -> MethodOutput``: one micro-batch, the loss
  summed over ``sample_size`` units, and summed statistics;
- :meth:`Method.summarize`: logged values from summed statistics (``loss`` included);
- optionally :meth:`Method.set_num_updates` (schedules: temperature, EMA decay), :meth:`Method.after_update`
  (after each optimizer step: EMA teacher, enqueue keys, memory bank), :meth:`Method.check` (warnings)
  and :meth:`Method.collapse` (a message stops the run).

Anything a method's checkpoint needs to be rebuilt is its ``Config``: ``config.json`` stores it under
``objective`` beside the model config, and :func:`speechcl.load_model` reads it back.

Helpers shared by the methods live here too: :func:`make_teacher`, :func:`ema_update_`, :func:`ema_decay`,
:func:`mean_pool`, :class:`MLP`, :func:`embedding_std` and :func:`gather_rows` (DDP).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import FeaturesOutput, Wav2Vec2Encoder

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter


@dataclass
class MethodOutput:
    """One micro-batch: the summed loss to back-propagate, its sample size, and statistics (sums)."""

    loss: Tensor
    sample_size: int
    stats: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """A pretraining method on the shared encoder (see the module docstring).

    Args:
        cfg: the encoder's model config (``model:``), as for :class:`Wav2Vec2ForPretraining`.
        method_cfg: an instance of the subclass's ``Config`` (``objective:`` without ``name``).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    uses_augment: ClassVar[bool] = False  # its views come from the ``augment:`` chain

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: Any) -> None:
        super().__init__()
        if not isinstance(method_cfg, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(method_cfg).__name__}")
        self.cfg = cfg
        self.method_cfg = method_cfg
        self.encoder = Wav2Vec2Encoder(cfg)

    def objective_config(self) -> dict[str, Any]:
        """What ``config.json`` stores under ``objective``: the name and every setting."""
        return {"name": self.name, **dataclasses.asdict(self.method_cfg)}

    def extract_features(self, wav: Tensor, padding_mask: Tensor | None = None) -> FeaturesOutput:
        """The encoder's hidden states (see :meth:`Wav2Vec2Encoder.extract_features`)."""
        return self.encoder.extract_features(wav, padding_mask)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        """One micro-batch of the collater's ``batch`` (``source [B, S]``, ``padding_mask [B, S]``, ``id [B]``,
        ``epoch [B]``); ``generator`` draws masks, crops and negatives; ``augment`` makes the views."""
        raise NotImplementedError

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Logged values (``loss`` first) from the summed ``stats`` of a log window or a validation pass."""
        raise NotImplementedError

    def valid_score(self, summary: dict[str, float]) -> float:
        """What picks the ``best`` checkpoint (lower is better)."""
        return summary["loss"]

    def set_num_updates(self, num_updates: int) -> None:
        """Before each update (``num_updates`` done so far): set schedules such as a temperature."""

    def after_update(self, num_updates: int) -> None:
        """After each optimizer step (``num_updates`` includes it): EMA teacher, queue, memory bank."""

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        """Warnings about known failure modes, given a logged training summary."""
        return []

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        """A message when the representation has collapsed (the run then stops), else ``None``."""
        return None


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` (EMA teacher / key encoder): same weights, no gradients."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``θ_teacher ← decay · θ_teacher + (1 − decay) · θ_student`` for every parameter; buffers are copied.

    Both modules must have the same structure (the teacher made by :func:`make_teacher`)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def ema_decay(start: float, end: float, num_updates: int, total: int, schedule: str = "cosine") -> float:
    """The EMA decay after ``num_updates`` of ``total``: ``constant`` (``start``), ``linear`` from ``start`` to
    ``end``, or ``cosine`` (BYOL: ``end − (end − start)(cos(π k/K) + 1)/2``); ``end`` once ``total`` is reached."""
    if schedule == "constant" or total <= 0:
        return start
    frac = min(max(num_updates / total, 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * frac
    if schedule == "cosine":
        return end - (end - start) * (math.cos(math.pi * frac) + 1.0) / 2.0
    raise ValueError(f"EMA schedule must be constant, linear or cosine, got {schedule!r}")


def mean_pool(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over valid frames: ``x [B, T, D]``, ``padding_mask [B, T]`` (True = padded) -> ``[B, D]``."""
    if padding_mask is None:
        return x.mean(1)
    keep = (~padding_mask).to(x.dtype)[..., None]
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class MLP(nn.Module):
    """Projection / prediction head: ``layers`` linear maps with BatchNorm-free ReLU between them.

    ``[N, in_dim] -> [N, out_dim]`` (hidden width ``hidden_dim``); ``norm`` adds a LayerNorm before each ReLU
    (speech batches are small and variable, so LayerNorm stands in for the papers' BatchNorm).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, norm: bool = False) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP head needs at least one layer, got {layers}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                if norm:
                    blocks.append(nn.LayerNorm(dims[i + 1]))
                blocks.append(nn.ReLU())
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension standard deviation of the L2-normalised rows of ``z [N, D]`` — about ``1/√D``
    for well-spread embeddings and 0 when every row is the same (collapse)."""
    if z.shape[0] < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(z.detach().float(), dim=-1)
    return float(unit.std(0).mean())


def gather_rows(x: Tensor) -> Tensor:
    """Rows of ``x [N, D]`` from every rank in rank order (``[ΣN, D]``; ranks may hold different N);
    ``x`` itself outside DDP. No gradient flows through the gathered rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])
