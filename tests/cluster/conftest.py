"""One thread for torch and the BLAS/OpenMP pools (scikit-learn's k-means oversubscribes a shared CPU badly:
0.07 s with one thread, ~6 s with the default pool on the two busy cores of the test machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(saved)
