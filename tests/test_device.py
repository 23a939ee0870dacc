"""Device names mean the same for every verb and the trainer: auto, cpu, cuda, cuda:N."""

from __future__ import annotations

import pytest
import torch

from speechcl.utils.device import resolve_device


@pytest.mark.parametrize("has_cuda", [False, True])
def test_auto_and_explicit_names(monkeypatch, has_cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    assert resolve_device("auto", environ={}) == torch.device("cuda" if has_cuda else "cpu")
    assert resolve_device("CPU", environ={}) == torch.device("cpu")
    if has_cuda:
        assert resolve_device("cuda:1", environ={"LOCAL_RANK": "3"}) == torch.device("cuda", 1)
        # a bare cuda under torchrun is this process's GPU, also when auto picks it
        assert resolve_device("cuda", environ={"LOCAL_RANK": "3"}) == torch.device("cuda", 3)
        assert resolve_device("auto", environ={"LOCAL_RANK": "2"}) == torch.device("cuda", 2)


def test_errors_name_the_flag_to_change(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"trainer.device='cuda' but CUDA is not available.*trainer.device=cpu"):
        resolve_device("cuda", "trainer.device")
    with pytest.raises(ValueError, match=r"--device='cuda:0' but CUDA"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        resolve_device("meta", "--device")
