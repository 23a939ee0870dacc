"""Public Python API: :func:`load_model` (implemented in :mod:`speechcl.interop.loading`)."""

from speechcl.interop.loading import load_model

__all__ = ["load_model"]
