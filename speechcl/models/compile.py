"""``torch.compile`` of the encoder's transformer layers, for training and for extraction.

What is compiled: each :class:`~speechcl.models.context.TransformerLayer` of a speechcl encoder (where
the FLOPs are, and where fusing LayerNorm, residuals, dropout and GELU saves memory traffic and kernel
launches). The rest of the encoder stays eager: the feature encoder is a custom autograd function whose
per-row group-norm statistics and strided GEMMs are tuned by hand, and masking, layerdrop and the padding
checks are data-dependent Python control flow that would split a graph anyway.

Shapes: ``dynamic=True``. Batches come from the length-bucketed sampler with every item cropped to the
batch's shortest (pretraining) or padded to its longest (fine-tuning, extraction), so the frame count
``T`` takes a new value in nearly every batch. ``dynamic=False`` would compile once per ``(B, T)`` —
unbounded, unless batches were padded to a few bucket lengths, which forces a padding mask on every batch
(and with it the memory-efficient attention kernel instead of flash on CUDA) and computes the pad frames.
With symbolic ``B`` and ``T`` one graph serves every length; what still makes a new graph is what
changes the program: train vs eval, a mask vs none, a batch of 1 (0/1 sizes are specialised), autocast
on or off, grad mode. That is a handful per run, counted by :func:`compile_counters` (the trainer logs it).

All layers share one compiled function that takes the layer as an argument (its parameters are graph
inputs), so twelve layers compile once, a ``copy.deepcopy`` of a compiled model (an EMA teacher) runs its
own weights, and ``state_dict`` keys do not change. Dropout inside a compiled layer draws from
Inductor's own generator (seeded from torch's global RNG, so a run still repeats exactly), not the
eager draws: compiled training is reproducible but not bit-identical to eager training.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from speechcl.models.context import TransformerLayer
from speechcl.models.wav2vec2 import encoder_of

DEFAULT_BACKEND = "inductor"
"""The ``torch.compile`` backend of :func:`compile_encoder` when none is given and the environment variable
``SPEECHCL_COMPILE_BACKEND`` is unset (tests set ``aot_eager``: the same graph capture, no code generation)."""
RECOMPILE_LIMIT = 16
"""Graphs one compiled function may hold before dynamo falls back to eager (raised from torch's 8: the
variants of train/eval x mask/none x batch of 1 alone make 8)."""


def _run_layer(layer: TransformerLayer, x: Tensor, attn_mask: Tensor | None, rows_attend: bool | None = None
               ) -> Tensor:
    return TransformerLayer.forward(layer, x, attn_mask, rows_attend)


@functools.cache
def _compiled_layer(backend: str, dynamic: bool, mode: str | None) -> Callable[..., Tensor]:
    return torch.compile(_run_layer, backend=backend, dynamic=dynamic, mode=mode)


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.6
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)
            return


def compile_encoder(model: nn.Module, *, backend: str | None = None, dynamic: bool = True,
                    mode: str | None = None) -> int:
    """Compile the transformer layers of ``model``'s encoder in place (see the module docstring).

    Args:
        model: a speechcl model (pretraining, CTC, an objective's model) or a bare encoder.
        backend: ``torch.compile`` backend (default: ``$SPEECHCL_COMPILE_BACKEND``, else Inductor).
        dynamic: symbolic batch and frame sizes (the default; ``False`` compiles per shape).
        mode: ``torch.compile`` mode (``None``, ``"reduce-overhead"``, ``"max-autotune"``).
    Returns:
        the number of layers compiled.
    Raises:
        ValueError: ``model`` has no speechcl encoder.
    """
    layers = encoder_of(model).encoder.layers
    compiled = _compiled_layer(backend or os.environ.get("SPEECHCL_COMPILE_BACKEND") or DEFAULT_BACKEND, dynamic, mode)
    _raise_recompile_limit()
    for layer in layers:
        # an instance attribute: nn.Module.__call__ finds it; deepcopy rebinds the partial to the copy
        layer.forward = functools.partial(compiled, layer)
    return len(layers)


def uncompile_encoder(model: nn.Module) -> None:
    """Undo :func:`compile_encoder` (the layers run eagerly again)."""
    for layer in encoder_of(model).encoder.layers:
        layer.__dict__.pop("forward", None)


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_encoder` compiled ``model``'s encoder layers."""
    return any("forward" in layer.__dict__ for layer in encoder_of(model).encoder.layers)


def compile_counters() -> dict[str, Any]:
    """Process-wide dynamo counts: ``graphs`` compiled (each recompilation adds one), ``frames`` that
    dynamo entered, and ``graph_breaks`` (a compiled layer has none; more means a regression)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "frames": int(counters["frames"].get("ok", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}
