"""Gumbel-softmax product quantizer (wav2vec 2.0 §2, fairseq ``GumbelVectorQuantizer``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Standard Gumbel(0, 1) noise ``-log(E)``, ``E ~ Exp(1)``, float32 — the same draw torch's
    ``F.gumbel_softmax`` makes, but from an explicit generator."""
    e = torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=generator)
    return -e.log()


def perplexity(probs: Tensor) -> Tensor:
    """Sum over groups of ``exp(entropy)`` of the average distribution.

    ``probs [N, G, V]`` → scalar; ``G·V`` when every entry is used equally, ``G`` at full collapse.
    ``log(p + 1e-7)`` as fairseq: ``xlogy`` would be exact but its gradient is ``-inf`` where an average
    probability underflows to 0, which turns the whole update into NaN.
    """
    avg = probs.float().mean(0)
    return torch.exp(-torch.sum(avg * torch.log(avg + 1e-7), dim=-1)).sum()


@dataclass
class QuantizerOutput:
    """Codevectors and the statistics of one quantizer call (``N`` = number of input vectors)."""

    codevectors: Tensor  # [N, codevector_dim]
    code_perplexity: Tensor  # scalar: perplexity of the hard code assignments
    prob_perplexity: Tensor  # scalar: perplexity of the averaged softmax (drives the diversity loss)
    indices: Tensor  # [N, G] chosen entry per group


class GumbelVectorQuantizer(nn.Module):
    """Product quantization with ``G`` codebooks of ``V`` entries of size ``codevector_dim / G``.

    Args:
        input_dim: size of the features quantized (512 for BASE: the normalised encoder output).
        num_vars: V (fairseq ``latent_vars``; 320).
        groups: G (fairseq ``latent_groups``; 2).
        codevector_dim: size of the concatenated codevector (fairseq ``latent_dim`` or ``final_dim``; 256).
        temperature: Gumbel temperature schedule ``(start, end, decay)`` = (2, 0.5, 0.999995); the trainer
            calls :meth:`set_num_updates` so that ``temperature = max(start * decay**updates, end)``.

    In training mode entries are chosen by a hard Gumbel-softmax with straight-through gradient; in eval
    mode by argmax.
    """

    def __init__(self, input_dim: int, num_vars: int, groups: int, codevector_dim: int,
                 temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995)) -> None:
        super().__init__()
        if codevector_dim % groups:
            raise ValueError(f"codevector_dim {codevector_dim} must be divisible by groups {groups}")
        self.num_vars = num_vars
        self.groups = groups
        self.codevector_dim = codevector_dim
        self.weight_proj = nn.Linear(input_dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.codevectors = nn.Parameter(torch.empty(1, groups * num_vars, codevector_dim // groups))
        nn.init.uniform_(self.codevectors)
        self.max_temp, self.min_temp, self.temp_decay = temperature
        self.temperature = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the temperature to ``max(start * decay**num_updates, end)``."""
        self.temperature = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x [N, input_dim]``.

        ``noise [N * G, V]`` (float32) replaces the Gumbel draw when given (for tests against another
        implementation); otherwise noise comes from ``generator``.
        """
        if x.dim() != 2:
            raise ValueError(f"expected features of shape [N, dim], got {tuple(x.shape)}")
        n = x.shape[0]
        logits = self.weight_proj(x).float().view(n * self.groups, self.num_vars)
        soft = logits.softmax(-1).view(n, self.groups, self.num_vars)
        prob_ppl = perplexity(soft) if n > 0 else logits.new_zeros(())
        hard_idx = logits.argmax(-1)
        if self.training:
            if noise is None:
                noise = gumbel_noise(tuple(logits.shape), generator, logits.device)
            y_soft = ((logits + noise) / self.temperature).softmax(-1)
            idx = y_soft.argmax(-1)
            y_hard = torch.zeros_like(y_soft).scatter_(-1, idx[:, None], 1.0)
            probs = y_hard - y_soft.detach() + y_soft  # straight-through
        else:
            idx = hard_idx
            probs = torch.zeros_like(logits).scatter_(-1, idx[:, None], 1.0)
        hard = F.one_hot(hard_idx, self.num_vars).view(n, self.groups, self.num_vars).float()
        code_ppl = perplexity(hard) if n > 0 else logits.new_zeros(())
        # Per group, [N, V] @ [V, d]: the selected entry (with the straight-through gradient) without
        # materialising an [N, G*V, d] product.
        probs = probs.to(self.codevectors.dtype).view(n, self.groups, self.num_vars)
        book = self.codevectors.view(self.groups, self.num_vars, -1)
        vectors = torch.einsum("ngv,gvd->ngd", probs, book)
        return QuantizerOutput(
            codevectors=vectors.reshape(n, self.codevector_dim),
            code_perplexity=code_ppl,
            prob_perplexity=prob_ppl,
            indices=idx.view(n, self.groups),
        )
