"""Floating-point operation counts and the machine's attainable matmul rate.

Hardware utilisation is quoted as achieved GFLOP/s (the FLOPs of a call divided by its median time)
against a large square float32 matmul timed in the same run, the best case for the same cores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter


def _cpu_sdpa_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                       **kwargs: Any) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def _addmm_inplace(self: Any, mat1: Any, mat2: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    m, k = mat1
    return 2 * m * k * mat2[1]


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas torch's counter lacks: its CPU flash-attention kernels (their GPU twins are counted) and the
    in-place ``addmm_`` (the feature encoder accumulates GEMMs into its outputs and gradients)."""
    aten = torch.ops.aten
    extra: dict[Any, Callable[..., int]] = {aten.addmm_: _addmm_inplace}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward
    return extra


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward), counted with
    :class:`torch.utils.flop_counter.FlopCounterMode`, a multiply-add counting as 2.

    Element-wise work (norms, activations, the optimizer update) is not counted, as is usual for
    model-FLOP utilisation.
    """
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_call(size: int, device: torch.device, repeats: int = 4, seed: int = 0) -> tuple[Callable[[], None], float]:
    """A call doing ``repeats`` float32 ``[size, size] @ [size, size]`` products, and its GFLOP (``2·n³`` each).

    The product is written into a preallocated output, so the call measures the kernel, not allocation.
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"need size >= 1 and repeats >= 1, got size={size}, repeats={repeats}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=g).to(device)
    b = torch.randn(size, size, generator=g).to(device)
    out = torch.empty(size, size, device=device)

    def call() -> None:
        for _ in range(repeats):
            torch.mm(a, b, out=out)

    return call, 2.0 * size**3 * repeats / 1e9
