"""Floating-point operation counts and the machine's attainable matmul rate.

Hardware utilisation is quoted as achieved GFLOP/s (the FLOPs of a call divided by its median time)
against a large square matmul of the same compute type timed in the same run, the best case for the same
cores: float32 (and TF32 on GPUs) for float32 steps, bfloat16 for bf16-autocast ones.
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


MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
"""Reference matmul types: ``fp32`` as float32 matmuls run now (TF32 on a GPU only where
``torch.backends.cuda.matmul.allow_tf32`` is set, off by default), ``tf32`` with TF32 forced on (GPUs),
``bf16``."""


def matmul_call(size: int, device: torch.device, repeats: int = 4, seed: int = 0, dtype: str = "fp32"
                ) -> tuple[Callable[[], None], float]:
    """A call doing ``repeats`` ``[size, size] @ [size, size]`` products in ``dtype`` (a key of
    :data:`MATMUL_DTYPES`), and its GFLOP (``2·n³`` each).

    The product is written into a preallocated output, so the call measures the kernel, not allocation.
    ``tf32`` switches TF32 on for the call only (and back to what it was).
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"need size >= 1 and repeats >= 1, got size={size}, repeats={repeats}")
    if dtype not in MATMUL_DTYPES:
        raise ValueError(f"matmul dtype must be one of {sorted(MATMUL_DTYPES)}, got {dtype!r}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=g).to(device, MATMUL_DTYPES[dtype])
    b = torch.randn(size, size, generator=g).to(device, MATMUL_DTYPES[dtype])
    out = torch.empty(size, size, device=device, dtype=MATMUL_DTYPES[dtype])

    def products() -> None:
        for _ in range(repeats):
            torch.mm(a, b, out=out)

    def call() -> None:
        if dtype != "tf32":
            return products()
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            products()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved

    return call, 2.0 * size**3 * repeats / 1e9
