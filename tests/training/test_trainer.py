"""The training loop in-process: resuming at an epoch boundary, the ``best`` checkpoint, precision."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from speechcl.training.trainer import Task, TaskOutput, autocast_context, resolve_precision, train
from tests.training.helpers import (
    BATCHES_PER_EPOCH,
    max_abs_diff,
    read_log,
    read_state,
    read_weights,
    tiny_configs,
    tiny_pieces,
)


class Recorder:
    """Wraps a task: records the item ids of every micro-batch; raises after ``crash_after`` forwards;
    optionally replaces the validation score by a fixed sequence, and waits ``sleep`` seconds (idle, no CPU)
    in every training forward."""

    def __init__(self, task: object, crash_after: int | None = None, scores: list[float] | None = None,
                 sleep: float = 0.0) -> None:
        self.task, self.crash_after, self.scores, self.sleep = task, crash_after, scores, sleep
        self.ids: list[list[int]] = []

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        if model.training:
            if self.crash_after is not None and len(self.ids) >= self.crash_after:
                raise RuntimeError("simulated crash")
            self.ids.append(batch["id"].tolist())
            time.sleep(self.sleep)
        return self.task.forward(model, batch, generator)

    def valid_score(self, summary: dict[str, float]) -> float:
        return self.scores.pop(0) if self.scores else self.task.valid_score(summary)

    def __getattr__(self, name: str) -> object:
        return getattr(self.task, name)


def _run(manifest_dir: Path, exp_dir: Path, seed: int = 1, **kwargs: object) -> tuple[dict, Recorder]:
    crash_after, sleep = kwargs.pop("crash_after", None), float(kwargs.pop("sleep", 0.0))  # type: ignore[arg-type]
    model, task, train_loader, _ = tiny_pieces(manifest_dir, seed=seed, valid=False)
    recorder = Recorder(task, crash_after=crash_after, sleep=sleep)  # type: ignore[arg-type]
    trainer, optim, schedule = tiny_configs(**kwargs)
    return train(model, recorder, train_loader, None, exp_dir, trainer, optim, schedule), recorder


@pytest.fixture(scope="module")
def reference(manifest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recorder]:
    """6 uninterrupted updates: epoch 0 (4 batches) and half of epoch 1."""
    exp = tmp_path_factory.mktemp("reference")
    result, recorder = _run(manifest_dir, exp, max_update=6)
    assert result["num_updates"] == 6
    return exp, recorder


def test_epochs_cover_every_item_once(reference: tuple[Path, Recorder]) -> None:
    _, recorder = reference
    epoch0 = [i for batch in recorder.ids[:BATCHES_PER_EPOCH] for i in batch]
    assert sorted(epoch0) == list(range(12))
    assert recorder.ids[BATCHES_PER_EPOCH:] != recorder.ids[:2]  # epoch 1 is reshuffled


def test_resume_from_checkpoint_on_last_batch_of_epoch(manifest_dir: Path, tmp_path: Path,
                                                       reference: tuple[Path, Recorder]) -> None:
    ref_exp, ref = reference
    with pytest.raises(RuntimeError, match="simulated crash"):  # crash in update 5, after saving at 4
        _run(manifest_dir, tmp_path, max_update=6, save_interval=BATCHES_PER_EPOCH, crash_after=BATCHES_PER_EPOCH)
    state = read_state(tmp_path / "checkpoints" / "last")
    assert state["num_updates"] == BATCHES_PER_EPOCH
    assert state["loader"]["position"] == BATCHES_PER_EPOCH and state["loader"]["epoch"] == 0
    # resume into a differently initialised model: everything must come from the checkpoint
    result, resumed = _run(manifest_dir, tmp_path, seed=99, max_update=6)
    assert result["num_updates"] == 6
    assert resumed.ids == ref.ids[BATCHES_PER_EPOCH:]  # epoch 1's first batches, not epoch 0 again
    diff = max_abs_diff(read_weights(tmp_path / "checkpoints" / "last"),
                        read_weights(ref_exp / "checkpoints" / "last"))
    assert diff == 0.0, f"max abs difference {diff:.3g}"


def test_resume_after_max_epoch_continues_with_next_epoch(manifest_dir: Path, tmp_path: Path,
                                                          reference: tuple[Path, Recorder]) -> None:
    ref_exp, ref = reference
    result, _ = _run(manifest_dir, tmp_path, max_update=6, max_epoch=1)  # stops after epoch 0
    assert result["num_updates"] == BATCHES_PER_EPOCH
    result, resumed = _run(manifest_dir, tmp_path, seed=99, max_update=6)
    assert result["num_updates"] == 6
    assert resumed.ids == ref.ids[BATCHES_PER_EPOCH:]
    diff = max_abs_diff(read_weights(tmp_path / "checkpoints" / "last"),
                        read_weights(ref_exp / "checkpoints" / "last"))
    assert diff == 0.0, f"max abs difference {diff:.3g}"


def test_resume_when_already_done_is_a_no_op(manifest_dir: Path, tmp_path: Path) -> None:
    _run(manifest_dir, tmp_path, max_update=2)
    before = read_weights(tmp_path / "checkpoints" / "last")
    result, again = _run(manifest_dir, tmp_path, seed=99, max_update=2)
    assert result["num_updates"] == 2 and again.ids == []
    diff = max_abs_diff(before, read_weights(tmp_path / "checkpoints" / "last"))
    assert diff == 0.0, f"max abs difference {diff:.3g}"


def test_best_checkpoint_follows_validation_score(manifest_dir: Path, tmp_path: Path) -> None:
    model, task, train_loader, valid_loader = tiny_pieces(manifest_dir)
    scores = [3.0, 1.0, 2.0, 5.0]  # validations after updates 1, 2, 3 and at the end (4)
    recorder = Recorder(task, scores=list(scores))
    trainer, optim, schedule = tiny_configs(max_update=4, valid_interval=1, keep_interval_updates=1, keep_last=10)
    result = train(model, recorder, train_loader, valid_loader, tmp_path, trainer, optim, schedule)
    assert result["best"] == 1.0
    ckpts = tmp_path / "checkpoints"
    assert read_state(ckpts / "best")["num_updates"] == 2
    assert read_state(ckpts / "last")["num_updates"] == 4 and read_state(ckpts / "last")["best"] == 1.0
    diff = max_abs_diff(read_weights(ckpts / "best"), read_weights(ckpts / "step_00000002"))
    assert diff == 0.0, f"max abs difference {diff:.3g}"
    valid = [r for r in read_log(tmp_path) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [1, 2, 3, 4]
    assert [r["best"] for r in valid] == [3.0, 1.0, 1.0, 1.0]
    assert {"loss", "accuracy", "code_perplexity"} <= valid[0].keys()
    # the pretraining task ranks checkpoints by validation contrastive loss
    assert task.valid_score({"loss": 2.5, "accuracy": 0.9}) == 2.5


def test_bf16_autocast_on_cpu(manifest_dir: Path, tmp_path: Path) -> None:
    model, task, train_loader, valid_loader = tiny_pieces(manifest_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer, optim, schedule = tiny_configs(max_update=2, precision="bf16")
    result = train(model, task, train_loader, valid_loader, tmp_path, trainer, optim, schedule)
    assert result["num_updates"] == 2 and result["nonfinite_skipped"] == 0
    log = [r for r in read_log(tmp_path) if r["split"] in ("train", "valid")]
    assert len(log) == 3
    assert all(torch.isfinite(torch.tensor([r["loss"], r["total_loss"]])).all() for r in log)
    assert all(v.dtype == before[k].dtype for k, v in model.state_dict().items())  # weights stay float32
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fp16_on_cpu_is_rejected(manifest_dir: Path, tmp_path: Path) -> None:
    model, task, train_loader, _ = tiny_pieces(manifest_dir, valid=False)
    trainer, optim, schedule = tiny_configs(precision="fp16")
    with pytest.raises(ValueError, match="fp16 needs a GPU; use bf16"):
        train(model, task, train_loader, None, tmp_path, trainer, optim, schedule)
    trainer, optim, schedule = tiny_configs(precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        train(model, task, train_loader, None, tmp_path, trainer, optim, schedule)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"),
                                                             (False, False, "fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool,
                                        expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    for given in ("fp32", "bf16"):  # explicit choices are kept whatever the CPU
        assert resolve_precision(given, torch.device("cpu")) == given


def test_auto_precision_trains_in_what_it_resolves_to(manifest_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` on a bf16 CPU runs the same loop as ``bf16``: identical logged losses."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    losses = {}
    for precision in ("bf16", "auto"):
        model, task, train_loader, valid_loader = tiny_pieces(manifest_dir)
        trainer, optim, schedule = tiny_configs(max_update=2, precision=precision)
        train(model, task, train_loader, valid_loader, tmp_path / precision, trainer, optim, schedule)
        losses[precision] = [r["loss"] for r in read_log(tmp_path / precision) if r["split"] in ("train", "valid")]
    assert losses["auto"] == losses["bf16"] and len(losses["auto"]) == 3


def test_bench_runs_under_the_trainers_autocast() -> None:
    """The benchmarks' context is the trainer's (same dtype), restricted to the precisions they compare."""
    from speechcl.bench.reference import autocast

    cpu = torch.device("cpu")
    x = torch.randn(4, 8)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with autocast(cpu, precision):
            bench = (x @ x.T).dtype
        with autocast_context(cpu, precision):
            trainer = (x @ x.T).dtype
        assert bench == trainer == dtype
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        autocast(cpu, "fp16")
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        autocast_context(cpu, "auto")


class EmaTask(Task):
    """A task with method state: an exponential moving average of one weight tensor, updated in
    ``after_update`` and kept in ``state_dict`` (as an EMA teacher's schedule state would be)."""

    name = "encoder.post_extract_proj.weight"

    def __init__(self, task: Task, crash_after: int | None = None) -> None:
        self.task, self.crash_after = task, crash_after
        self.ema: Tensor | None = None
        self.calls: list[int] = []

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        if model.training and self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise RuntimeError("simulated crash")
        return self.task.forward(model, batch, generator)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return self.task.summarize(sums)

    def before_update(self, model: nn.Module, num_updates: int) -> None:
        self.task.before_update(model, num_updates)

    def after_update(self, model: nn.Module, num_updates: int) -> None:
        weight = model.get_parameter(self.name).detach()
        self.ema = weight.clone() if self.ema is None else 0.9 * self.ema + 0.1 * weight
        self.calls.append(num_updates)

    def state_dict(self) -> dict[str, object]:
        return {"ema": self.ema, "calls": list(self.calls)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.ema, self.calls = state["ema"], list(state["calls"])  # type: ignore[assignment,arg-type]


def _run_ema(manifest_dir: Path, exp_dir: Path, seed: int = 1, crash_after: int | None = None,
             **kwargs: object) -> EmaTask:
    model, task, train_loader, _ = tiny_pieces(manifest_dir, seed=seed, valid=False)
    ema = EmaTask(task, crash_after=crash_after)
    trainer, optim, schedule = tiny_configs(**kwargs)
    train(model, ema, train_loader, None, exp_dir, trainer, optim, schedule)
    return ema


def test_task_state_follows_each_update_and_resumes_exactly(manifest_dir: Path, tmp_path: Path) -> None:
    reference = _run_ema(manifest_dir, tmp_path / "reference", max_update=5)
    assert reference.calls == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies in update 4, after saving at 3
        _run_ema(manifest_dir, tmp_path / "resumed", max_update=5, save_interval=3, crash_after=3)
    saved = read_state(tmp_path / "resumed" / "checkpoints" / "last")["task"]
    assert saved["calls"] == [1, 2, 3]
    resumed = _run_ema(manifest_dir, tmp_path / "resumed", seed=99, max_update=5)
    assert resumed.calls == [1, 2, 3, 4, 5]
    assert resumed.ema is not None and reference.ema is not None
    assert torch.equal(resumed.ema, reference.ema)


def test_after_update_sees_the_stepped_weights(manifest_dir: Path, tmp_path: Path) -> None:
    _run_ema(manifest_dir, tmp_path, max_update=1)
    ema = read_state(tmp_path / "checkpoints" / "last")["task"]["ema"]
    assert torch.equal(ema, read_weights(tmp_path / "checkpoints" / "last")[EmaTask.name])


def test_a_task_without_state_refuses_a_checkpoint_with_task_state(manifest_dir: Path, tmp_path: Path) -> None:
    _run_ema(manifest_dir, tmp_path, max_update=1)
    model, task, train_loader, _ = tiny_pieces(manifest_dir, valid=False)
    trainer, optim, schedule = tiny_configs(max_update=2)
    with pytest.raises(ValueError, match="task state"):
        train(model, task, train_loader, None, tmp_path, trainer, optim, schedule)


def test_rerun_of_a_finished_run_changes_nothing_and_a_lost_final_validation_is_redone(
        manifest_dir: Path, tmp_path: Path) -> None:
    def run() -> dict:
        model, task, train_loader, valid_loader = tiny_pieces(manifest_dir)
        trainer, optim, schedule = tiny_configs(max_update=3, valid_interval=2, save_interval=3)
        return train(model, task, train_loader, valid_loader, tmp_path, trainer, optim, schedule)

    first = run()
    log = (tmp_path / "log.jsonl").read_text()
    assert run() == first and (tmp_path / "log.jsonl").read_text() == log  # no second final validation
    # killed after the final checkpoint, before the final validation: the rerun validates as the run would
    (tmp_path / "train_result.json").unlink()
    lines = log.splitlines(keepends=True)
    assert '"split": "valid", "step": 3' in lines[-1]
    (tmp_path / "log.jsonl").write_text("".join(lines[:-1]))
    again = run()
    assert (tmp_path / "log.jsonl").read_text().splitlines()[-1] == lines[-1].rstrip("\n")
    assert again["valid"] == first["valid"]


def test_time_budget_ends_the_run_and_a_larger_budget_resumes_it_exactly(
        manifest_dir: Path, tmp_path: Path, reference: tuple[Path, Recorder]) -> None:
    ref_exp, ref = reference
    result, first = _run(manifest_dir, tmp_path, max_update=6, max_minutes=1e-9)  # spent before update 1 ends
    assert result["num_updates"] == 1 and len(first.ids) == 1
    assert read_state(tmp_path / "checkpoints" / "last")["num_updates"] == 1
    result, again = _run(manifest_dir, tmp_path, seed=99, max_update=6, max_minutes=1e-9)
    assert result["num_updates"] == 1 and again.ids == []  # the budget is spent: a rerun does nothing
    result, resumed = _run(manifest_dir, tmp_path, seed=99, max_update=6, max_minutes=0.0)
    assert result["num_updates"] == 6 and resumed.ids == ref.ids[1:]
    diff = max_abs_diff(read_weights(tmp_path / "checkpoints" / "last"),
                        read_weights(ref_exp / "checkpoints" / "last"))
    assert diff == 0.0, f"max abs difference {diff:.3g}"


def test_a_cpu_time_budget_ignores_waiting_and_is_counted_over_resumed_parts(manifest_dir: Path,
                                                                             tmp_path: Path) -> None:
    # every update idles 0.5 s: a 2-second wall budget runs out within 4 updates; 2 s of CPU time is more than
    # 6 tiny updates use, so the same budget on the CPU clock lets the run reach max_update
    wall, _ = _run(manifest_dir, tmp_path / "wall", max_update=6, max_minutes=2 / 60, sleep=0.5)
    assert wall["num_updates"] <= 4
    cpu, _ = _run(manifest_dir, tmp_path / "cpu", max_update=6, max_minutes=2 / 60, budget_clock="cpu", sleep=0.5)
    assert cpu["num_updates"] == 6
    assert 0 < cpu["train_cpu_seconds"] < cpu["train_seconds"] - 2.5
    # a spent CPU budget stays spent on a rerun: the CPU time of the earlier part is saved and restored
    exp = tmp_path / "spent"
    first, _ = _run(manifest_dir, exp, max_update=6, max_minutes=1e-9, budget_clock="cpu")
    assert first["num_updates"] == 1
    assert read_state(exp / "checkpoints" / "last")["train_cpu_seconds"] > 0
    again, rerun = _run(manifest_dir, exp, max_update=6, max_minutes=1e-9, budget_clock="cpu")
    assert again["num_updates"] == 1 and rerun.ids == []


def test_a_schedule_spanning_the_budget_is_complete_when_the_budget_is_spent(manifest_dir: Path,
                                                                           tmp_path: Path) -> None:
    # every update idles 0.3 s and the budget is 3.6 s, so the budget ends the run after at most 12 of the 100
    # updates max_update allows; over the budget the linear decay reaches 0 at the last update, over the
    # updates it would still be near the peak
    kwargs: dict[str, object] = dict(max_update=100, max_minutes=3.6 / 60, sleep=0.3)
    spanned, _ = _run(manifest_dir, tmp_path / "budget", schedule_span="budget", **kwargs)
    assert 3 <= spanned["num_updates"] <= 12
    lrs = [row["lr"] for row in read_log(tmp_path / "budget") if "lr" in row]
    assert lrs[-1] == 0.0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decaying after the 2-update warmup
    assert lrs[2] < 0.8e-3  # ahead of the update count: 3 updates idle 0.9 s of 3.6, a quarter of 100 updates
    state = read_state(tmp_path / "budget" / "checkpoints" / "last")
    assert state["scheduler"]["position"] == 100.0
    by_updates, _ = _run(manifest_dir, tmp_path / "updates", **kwargs)
    assert by_updates["num_updates"] <= 12
    assert [row["lr"] for row in read_log(tmp_path / "updates") if "lr" in row][-1] > 0.85e-3


def test_schedule_span_budget_needs_a_budget(manifest_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trainer.max_minutes"):
        _run(manifest_dir, tmp_path, schedule_span="budget")
