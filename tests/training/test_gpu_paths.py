"""The trainer's GPU-facing switches, on CPU: ``trainer.compile``, the optimizer's kernel choice and how
it survives a checkpoint written with another one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechcl.models.compile import compile_counters, is_compiled
from speechcl.training.trainer import OptimConfig, build_optimizer, load_optimizer_state, train
from tests.training.helpers import read_log, tiny_configs, tiny_pieces

pytestmark = pytest.mark.usefixtures("one_thread")


def _steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], n: int = 2) -> None:
    for i in range(n):
        for p in params:
            p.grad = torch.full_like(p, 0.1 * (i + 1))
        optimizer.step()


def test_cpu_optimizer_is_torchs_default_adamw():
    """On CPU nothing changes: the same updates as a plain AdamW, bit for bit."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig()
    ours = build_optimizer(a, cfg)
    plain = torch.optim.AdamW(b.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    assert not ours.param_groups[0]["fused"]
    _steps(ours, list(a.parameters()))
    _steps(plain, list(b.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("saved_fused", [True, False])
def test_loading_a_checkpoint_keeps_this_optimizers_kernel(saved_fused):
    """A checkpoint from a fused (GPU) run resumed by an unfused one, and the other way round: each keeps
    its own kernel, with its step counters where that kernel wants them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    writer = torch.optim.AdamW(model.parameters(), fused=saved_fused or None)
    _steps(writer, list(model.parameters()))
    state = writer.state_dict()
    reader = torch.optim.AdamW(model.parameters(), fused=(not saved_fused) or None)
    load_optimizer_state(reader, state)
    assert bool(reader.param_groups[0]["fused"]) is (not saved_fused)
    for p in model.parameters():
        step = reader.state[p]["step"]
        assert float(step) == 2.0 and step.device == p.device
        if not saved_fused:  # now fused: float32 counters on the parameter's device
            assert step.dtype == torch.float32
    _steps(reader, list(model.parameters()), 1)  # and it steps
    assert float(reader.state[next(model.parameters())]["step"]) == 3.0


@pytest.mark.slow
def test_trainer_compile_trains_and_logs_the_graph_count(manifest_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHCL_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    model, task, train_loader, valid_loader = tiny_pieces(manifest_dir)
    trainer, optim, schedule = tiny_configs(max_update=3, compile=True)
    before = compile_counters()["graphs"]  # (a process-wide count)
    result = train(model, task, train_loader, None, tmp_path, trainer, optim, schedule)
    assert result["num_updates"] == 3 and is_compiled(model)
    logged = [r for r in read_log(tmp_path) if r["split"] == "train"]
    graphs = [r["compile_graphs"] for r in logged]
    assert len(graphs) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    # three batches of different lengths, one training graph (dynamic shapes); none added after the first
    assert 1 <= graphs[0] - before <= 2 and graphs[-1] == graphs[0]
