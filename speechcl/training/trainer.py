"""The training loop shared by pretraining, fine-tuning and every objective.

:func:`train` reads top to bottom: set up (device, ranks, precision, optimizer, schedule, scaler),
resume from ``checkpoints/last``, then ``for epoch: for group of update_freq batches:`` one
:func:`_train_step` (forward/backward each micro-batch, normalise, clip, optimizer step), the task's
``after_update`` hook, logging, :func:`_validate` and :func:`_save` at their intervals. What is being
trained is a :class:`Task`; method state that must survive a resume is described there.

Gradient normalisation follows fairseq: losses are *sums* over masked steps (or frames); the gradients
of all micro-batches on all ranks are summed and divided by the global sample size. DDP averages over
ranks, so gradients are multiplied by ``world_size / global_sample_size``.

Randomness: every micro-batch reseeds the global RNG and a private generator from
``(seed, epoch, global batch number)``. Masks, distractors, Gumbel noise and dropout are then a function of
the data position only, so a resumed run follows the uninterrupted trajectory and one process with
``update_freq = N`` matches N processes exactly. Layerdrop decisions come from ``(seed, epoch, update)``
(:func:`~speechcl.models.context.shared_layerdrop`): the same on every rank and micro-batch of an update,
which FSDP needs (a layer skipped on one rank only would leave the others waiting in its all-gather).

``trainer.strategy=fsdp`` shards the model with FSDP2 after it is on its device and before the optimizer is
built (:mod:`speechcl.training.sharding`); gradient accumulation, normalisation, clipping and the non-finite
checks are the same code as with DDP, and checkpoints add DCP shards of model and optimizer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from speechcl.data.loader import ResumableLoader
from speechcl.models.context import shared_layerdrop
from speechcl.training.checkpoints import CheckpointManager, rng_state, set_rng_state
from speechcl.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
)
from speechcl.training.metrics import MetricLogger
from speechcl.training.schedules import ScheduleConfig, Scheduler
from speechcl.training.sharding import (
    full_tensor,
    gather_full_weights,
    has_shards,
    load_shards,
    save_shards,
    shard_model,
)
from speechcl.utils.device import resolve_device
from speechcl.utils.io import atomic_write_text, write_lines
from speechcl.utils.signals import Preempted, preemptible

log = logging.getLogger("speechcl.train")


@dataclass
class OptimConfig:
    """Adam(W) settings (fairseq BASE pretraining: lr 5e-4, betas (0.9, 0.98), eps 1e-6, wd 0.01)."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0  # 0 disables clipping (the gradient norm is still logged)


@dataclass
class TrainerConfig:
    """Loop settings. ``max_update`` bounds the run; ``max_epoch`` and ``max_minutes`` (0 = unbounded) too.

    ``max_minutes`` is a time budget, counted over every resumed part of the run (validation included): the run
    ends after the update during which it ran out, on every rank at the same update. ``budget_clock`` says which
    time: ``wall`` (elapsed), or ``cpu``, the CPU time of the training process, all its threads together
    (data-loader workers are other processes and not counted), which stays a fair budget when jobs share cores.

    ``schedule_span`` says what the learning-rate schedule spans: ``updates`` (``max_update``; a run cut short by
    the budget stops part-way through it), or ``budget``, for a run that should fill a time budget on whatever
    machine it meets: each update's position in the schedule is the larger of the updates done and the budget's
    spent share times ``max_update`` (the ranks' mean share), so warmup, hold and decay take the same shares of
    the time on a slow machine as on a fast one, and the schedule is complete when the budget is spent.
    ``max_update`` then caps the updates on a fast machine. The learning rate depends on the clock, so such a run
    does not repeat exactly.
    """

    max_update: int = 400_000
    max_epoch: int = 0
    max_minutes: float = 0.0
    budget_clock: Literal["wall", "cpu"] = "wall"
    schedule_span: Literal["updates", "budget"] = "updates"
    update_freq: int = 1  # gradient accumulation (micro-batches per update and rank)
    seed: int = 1
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # auto: bf16 where the hardware has it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on CPU (0: torch's default)
    log_interval: int = 10
    valid_interval: int = 500  # updates between validations (0: only at the end)
    save_interval: int = 500  # updates between `last` saves (0: only at the end)
    keep_interval_updates: int = 0  # also keep step_<N> checkpoints every N updates (0: none)
    keep_last: int = 2
    max_consecutive_nonfinite: int = 10
    max_bad_item_share: float = 0.01  # stop when more than this share of training items cannot be read
    tensorboard: bool = True
    find_unused_parameters: bool = False
    # ddp: every rank holds the whole model and optimizer; fsdp: FSDP2 shards parameters, gradients and
    # optimizer states over the ranks (speechcl.training.sharding), checkpoints written with DCP
    strategy: Literal["ddp", "fsdp"] = "ddp"
    fsdp_full_weights: bool = True  # fsdp: also gather the full weights into each checkpoint's model.safetensors
    compile: bool = False  # torch.compile the encoder's transformer layers (speechcl.models.compile)


@dataclass
class TaskOutput:
    """One micro-batch: the summed loss to back-propagate, its sample size, and statistics (sums)."""

    loss: Tensor
    sample_size: int
    stats: dict[str, float] = field(default_factory=dict)


class Task:
    """What the loop trains: pretraining, fine-tuning, and every objective to come.

    A task implements :meth:`forward` (one micro-batch -> summed loss, sample size, summed statistics) and
    :meth:`summarize`; the rest have defaults. The loop calls, for every update::

        task.before_update(model, num_updates)    # schedules for the coming update (Gumbel temperature)
        task.forward(...) per micro-batch; backward; normalise; clip; optimizer step
        task.after_update(model, num_updates)     # num_updates now counts this update (EMA teacher, queue)

    ``model`` is the bare model in both hooks (never the DDP wrapper). Where method state lives:

    - tensors that belong with the network (an EMA teacher, a queue of keys, a memory bank) are
      submodules or buffers of the model, so ``model.safetensors`` saves them and resume restores them;
    - state of the procedure itself (a decay schedule's position, running statistics, counters) is what
      :meth:`state_dict` returns: saved in every checkpoint's ``trainer_state.pt`` (plain numbers,
      strings, lists, dicts and tensors only: it is loaded with ``weights_only=True``) and handed back
      to :meth:`load_state_dict` on resume, before the first ``before_update``.
    """

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        raise NotImplementedError

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Logged values from summed statistics (of a log window or a validation pass)."""
        raise NotImplementedError

    def valid_score(self, summary: dict[str, float]) -> float:
        """The validation score that picks ``best`` (lower is better)."""
        return summary["loss"]

    def before_update(self, model: nn.Module, num_updates: int) -> None:
        """Called before each update; ``num_updates`` updates are done so far."""

    def after_update(self, model: nn.Module, num_updates: int) -> None:
        """Called after each optimizer step; ``num_updates`` includes it. Skipped (non-finite) updates
        do not call it."""

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        """Warnings about known failure modes, given a logged training summary; raise
        :class:`CollapseError` to stop the run (every rank sees the same summary)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint has task state for "
                             f"{sorted(state)}: was it written by another objective?")


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient norm."""


class CollapseError(RuntimeError):
    """The representation collapsed (a task's :meth:`Task.check` says what): training on would waste the run."""


class BadDataError(ValueError):
    """More than ``trainer.max_bad_item_share`` of the training items could not be read."""


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32``/``bf16``/``fp16`` as given (checked against the device); ``auto`` -> ``bf16`` on a GPU that
    supports it or a CPU with native bf16 arithmetic (AVX512-BF16 or AMX), else ``fp32``.

    On CPUs without it, bf16 is emulated and slower than fp32, so ``auto`` keeps fp32 there.
    """
    if name not in ("fp32", "bf16", "fp16", "auto"):
        raise ValueError(f"trainer.precision must be fp32, bf16, fp16 or auto, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("trainer.precision=fp16 needs a GPU; use bf16 (or auto) on CPU")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return "bf16" if any(check is not None and check() for check in checks) else "fp32"
    return "fp32"


def micro_seed(seed: int, epoch: int, global_batch: int) -> int:
    """A 63-bit seed from (seed, epoch, batch) — the same on every rank layout."""
    x = (seed * 1_000_003 + epoch) * 1_000_000_007 + global_batch
    return x % (2**63 - 1)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: the fused kernel (one launch for every parameter) when they
    all live on a GPU, torch's default elsewhere (the per-parameter loop on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=True if fused else None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's own kernel choice (fused or not, see
    :func:`build_optimizer`): a checkpoint written on another device would otherwise bring its own
    ``fused``/``foreach`` flags along, and ``step`` counters on the device its kernel wanted."""
    flags = [(group.get("fused"), group.get("foreach")) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (fused, foreach) in zip(optimizer.param_groups, flags):
        group["fused"], group["foreach"] = fused, foreach
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, Tensor):
                where = p.device if fused or group.get("capturable") else torch.device("cpu")
                if step.device != where:
                    optimizer.state[p]["step"] = step.to(device=where, dtype=torch.float32)


def _groups(loader: ResumableLoader, size: int) -> Iterator[list[tuple[int, dict[str, Tensor]]]]:
    """Batches of the current epoch in groups of ``size`` (the last group may be shorter), each with
    its position in this rank's batch list."""
    group: list[tuple[int, dict[str, Tensor]]] = []
    for batch in loader:
        group.append((loader.state_dict()["position"] - 1, batch))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The batch's tensors on ``device``; asynchronous host-to-GPU copies from the loader's pinned memory
    (``pin_memory`` defaults to on where CUDA is available, :class:`~speechcl.data.loader.ResumableLoader`)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """What training and validation run under for a resolved ``precision``: nothing for ``fp32``,
    ``torch.autocast`` to bfloat16 for ``bf16`` and to float16 for ``fp16``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16 here (resolve 'auto' first), got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _merge(into: dict[str, float], stats: dict[str, float]) -> None:
    for k, v in stats.items():
        into[k] = into.get(k, 0.0) + float(v)


def _reduce_stats(stats: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Sums over ranks. Ranks may hold different keys (a task logs some sums only for batches that have
    them, e.g. MoCo's queue statistics, and one rank's share of a split may have none): the union of keys
    is reduced, a key a rank lacks counting 0 there."""
    if not info.enabled:
        return stats
    keys = sorted(set(all_gather_objects(sorted(stats), info)))
    values = all_reduce_sum(torch.tensor([stats.get(k, 0.0) for k in keys], dtype=torch.float64, device=device), info)
    return dict(zip(keys, values.tolist()))


def evaluate(model: nn.Module, task: Task, loader: ResumableLoader, device: torch.device, precision: str,
             seed: int, info: DistInfo) -> dict[str, float]:
    """Summed statistics over a validation loader (all ranks), summarised by the task."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    loader.set_epoch(0)
    with torch.no_grad():
        for position, batch in enumerate(loader):
            for _, path, reason in batch.get("bad", []):
                log.warning("validation skips an unreadable item: %s: %s", path, reason)
            if batch["source"].shape[0] == 0:
                continue
            generator = torch.Generator(device).manual_seed(micro_seed(seed + 7919, 0, position * info.world_size
                                                                       + info.rank))
            with autocast_context(device, precision):
                out = task.forward(model, _to_device(batch, device), generator)
            _merge(sums, out.stats)
    model.train(was_training)
    return task.summarize(_reduce_stats(sums, info, device))


def train(
    model: nn.Module,
    task: Task,
    train_loader: ResumableLoader,
    valid_loader: ResumableLoader | None,
    exp_dir: str | Path,
    cfg: TrainerConfig,
    optim_cfg: OptimConfig,
    schedule_cfg: ScheduleConfig,
    run_config: dict[str, Any] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``task`` until ``cfg.max_update`` updates (or ``cfg.max_epoch`` epochs), resuming
    from ``<exp_dir>/checkpoints/last`` when it exists.

    ``run_config`` (the resolved run configuration) and ``checkpoint_extra`` (e.g. the label set) are
    stored in every checkpoint's ``config.json``. Returns a summary: final update count, epoch, last
    validation summary, skipped updates, training seconds, best validation score.
    """
    run = _setup(model, task, train_loader, valid_loader, Path(exp_dir), cfg, optim_cfg, schedule_cfg,
                 dict(checkpoint_extra or {}) | ({"run": run_config} if run_config else {}))
    progress = _resume(run)
    finished = run.exp_dir / "train_result.json"
    if not _more_to_do(progress, cfg) and finished.exists():  # a rerun of a finished run: nothing to do
        return json.loads(finished.read_text())
    run.logger = MetricLogger(run.exp_dir, enabled=run.info.is_main, tensorboard=cfg.tensorboard,
                              total=cfg.max_update, start=progress.num_updates)
    window = _Window()

    with preemptible() as preemption, contextlib.closing(run.logger):
        while _more_to_do(progress, cfg):
            train_loader.set_epoch(progress.epoch)
            for group in _groups(train_loader, cfg.update_freq):
                step = _train_step(run, group, progress, stop=preemption.requested())
                progress.out_of_time = step.out_of_time
                if step.updated:  # (a non-finite update changed nothing: nothing to log, validate or save)
                    progress.num_updates += 1
                    lr = run.scheduler.step(step.budget_share * cfg.max_update
                                            if cfg.schedule_span == "budget" else None)
                    task.after_update(model, progress.num_updates)
                    run.logger.progress(progress.num_updates)
                    window.add(_reduce_stats(step.stats, run.info, run.device), step.grad_norm)
                    done = progress.num_updates >= cfg.max_update or progress.out_of_time
                    if _every(cfg.log_interval, progress.num_updates) or done:
                        _log_train(run, progress, window, lr)
                        window = _Window()
                    if _every(cfg.valid_interval, progress.num_updates) and not done:
                        _validate(run, progress)
                    keep = _every(cfg.keep_interval_updates, progress.num_updates)
                    if _every(cfg.save_interval, progress.num_updates) or keep or done:
                        _save(run, progress, keep=keep)
                if step.stop:  # SIGTERM/SIGINT reached some rank: save here, every rank leaves
                    _save(run, progress)
                    raise Preempted(f"stopped by {preemption.name or 'a signal on another rank'} at update "
                                    f"{progress.num_updates}; checkpoints/last holds it: rerun the same "
                                    "command to resume", preemption.signum)
                if progress.num_updates >= cfg.max_update or progress.out_of_time:
                    break
            if progress.num_updates < cfg.max_update and not progress.out_of_time:  # the epoch ran out first
                progress.epoch += 1

        last_valid = _validate(run, progress)
        if last_valid is None or not last_valid["improved"]:
            if progress.num_updates < cfg.max_update and not progress.out_of_time:
                _save(run, progress)  # stopped by max_epoch: the last updates are not saved yet
    result = {"num_updates": progress.num_updates, "epoch": progress.epoch,
              "nonfinite_skipped": progress.nonfinite_skipped, "valid": last_valid,
              "train_seconds": progress.seconds(), "train_cpu_seconds": progress.cpu_seconds(), "best": progress.best}
    if run.info.is_main:
        atomic_write_text(run.exp_dir / "train_result.json", json.dumps(_plain(result), indent=2) + "\n")
    return result


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint (but ``consecutive_nonfinite``) and restored on resume."""

    num_updates: int = 0
    epoch: int = 0
    best: float = math.inf  # best validation score so far (lower is better)
    nonfinite_skipped: int = 0
    consecutive_nonfinite: int = 0
    previous_seconds: float = 0.0  # training wall time of earlier (interrupted) runs
    previous_cpu_seconds: float = 0.0  # and their CPU time (the training process, every thread)
    bad_items: dict[str, str] = field(default_factory=dict)  # training files that could not be read -> why
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    out_of_time: bool = False  # max_minutes was reached (agreed across ranks; not saved: derived on resume)

    def seconds(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.started

    def cpu_seconds(self) -> float:
        return self.previous_cpu_seconds + time.process_time() - self.cpu_started


def _budget_share(progress: Progress, cfg: TrainerConfig, *, now: bool = True) -> float:
    """The share of ``cfg.max_minutes`` of ``cfg.budget_clock`` time spent, at most 1 (0 without a budget;
    ``now=False``: by the earlier parts)."""
    if cfg.max_minutes <= 0:
        return 0.0
    if cfg.budget_clock == "cpu":
        seconds = progress.cpu_seconds() if now else progress.previous_cpu_seconds
    else:
        seconds = progress.seconds() if now else progress.previous_seconds
    return min(seconds / (cfg.max_minutes * 60.0), 1.0)


def _over_budget(progress: Progress, cfg: TrainerConfig, *, now: bool = True) -> bool:
    """Whether ``cfg.max_minutes`` of ``cfg.budget_clock`` time are spent (``now=False``: by the earlier parts)."""
    return _budget_share(progress, cfg, now=now) >= 1.0


@dataclass
class _Run:
    """The pieces the loop's steps share (built once by :func:`_setup`)."""

    model: nn.Module
    task: Task
    train_loader: ResumableLoader
    valid_loader: ResumableLoader | None
    exp_dir: Path
    cfg: TrainerConfig
    clip_norm: float
    device: torch.device
    precision: str
    info: DistInfo
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler
    ckpt: CheckpointManager
    extra_config: dict[str, Any]
    ddp_model: nn.Module | None = None  # the model forward/backward runs through (DDP wrapper or model)
    sharded: bool = False  # trainer.strategy=fsdp with more than one rank: model is FSDP2-sharded
    last_batch: dict[str, Any] | None = None  # this rank's last readable batch (see _stand_in)
    logger: MetricLogger | None = None


@dataclass
class _Step:
    """What one update attempt reports: whether the optimizer stepped (not when non-finite), summed
    statistics of its micro-batches, the gradient norm, and whether any rank was asked to stop."""

    updated: bool
    stats: dict[str, float]
    grad_norm: float
    stop: bool
    out_of_time: bool = False  # the time budget ran out on some rank (every rank gets the same answer)
    budget_share: float = 0.0  # the ranks' mean share of the time budget spent (the same on every rank)


class _Window:
    """Statistics summed over the updates since the last training log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.start = time.perf_counter()

    def add(self, stats: dict[str, float], grad_norm: float) -> None:
        _merge(self.sums, stats | {"grad_norm_sum": grad_norm, "updates": 1.0})


def _more_to_do(progress: Progress, cfg: TrainerConfig) -> bool:
    return (progress.num_updates < cfg.max_update and (cfg.max_epoch <= 0 or progress.epoch < cfg.max_epoch)
            and not progress.out_of_time)


def _every(interval: int, num_updates: int) -> bool:
    return interval > 0 and num_updates % interval == 0


def _setup(model: nn.Module, task: Task, train_loader: ResumableLoader, valid_loader: ResumableLoader | None,
           exp_dir: Path, cfg: TrainerConfig, optim_cfg: OptimConfig, schedule_cfg: ScheduleConfig,
           extra_config: dict[str, Any]) -> _Run:
    """Device, ranks, precision, then the model on its device with optimizer, schedule and scaler."""
    device = resolve_device(cfg.device, "trainer.device")
    if cfg.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    info = init_distributed(device)
    sampler = train_loader.sampler
    if (sampler.rank, sampler.world_size) != (info.rank, info.world_size):
        raise ValueError(f"the training sampler was built for rank {sampler.rank} of {sampler.world_size} but this "
                         f"process is rank {info.rank} of {info.world_size}: call init_distributed() before "
                         "building the loaders")
    precision = resolve_precision(cfg.precision, device)
    if info.is_main and cfg.precision == "auto":
        log.info("trainer.precision=auto: training in %s on %s", precision, device)
    if cfg.update_freq < 1:
        raise ValueError(f"trainer.update_freq must be >= 1, got {cfg.update_freq}")
    if cfg.strategy not in ("ddp", "fsdp"):
        raise ValueError(f"trainer.strategy must be ddp or fsdp, got {cfg.strategy!r}")
    if cfg.budget_clock not in ("wall", "cpu"):
        raise ValueError(f"trainer.budget_clock must be wall or cpu, got {cfg.budget_clock!r}")
    if cfg.schedule_span not in ("updates", "budget"):
        raise ValueError(f"trainer.schedule_span must be updates or budget, got {cfg.schedule_span!r}")
    if cfg.schedule_span == "budget" and cfg.max_minutes <= 0:
        raise ValueError("trainer.schedule_span=budget spans the learning-rate schedule over the time budget, but "
                         f"trainer.max_minutes is {cfg.max_minutes}: set trainer.max_minutes (> 0), or use "
                         "trainer.schedule_span=updates")
    sharded = cfg.strategy == "fsdp" and info.enabled
    if sharded and precision == "fp16":
        raise ValueError("trainer.strategy=fsdp trains in fp32 or bf16 (fp16's loss scaling is not sharded here): "
                         "set trainer.precision=bf16 or fp32")
    if cfg.strategy == "fsdp" and not info.enabled and info.is_main:
        log.info("trainer.strategy=fsdp with one process: nothing to shard, training as one process")
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if cfg.compile:
        from speechcl.models.compile import compile_encoder

        layers = compile_encoder(model)
        if info.is_main:
            log.info("trainer.compile: %d transformer layers compiled (dynamic shapes)", layers)
    if sharded:
        units = shard_model(model, precision)
        if info.is_main:
            log.info("trainer.strategy=fsdp: %d FSDP units and the root sharded over %d ranks", units,
                     info.world_size)
    optimizer = build_optimizer(model, optim_cfg)  # after sharding: it steps the local shards
    return _Run(model=model, task=task, train_loader=train_loader, valid_loader=valid_loader, exp_dir=exp_dir,
                cfg=cfg, clip_norm=optim_cfg.clip_norm, device=device, precision=precision, info=info, sharded=sharded,
                optimizer=optimizer, scheduler=Scheduler(optimizer, schedule_cfg, optim_cfg.lr, cfg.max_update),
                scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
                ckpt=CheckpointManager(exp_dir, keep_last=cfg.keep_last), extra_config=extra_config)


def _resume(run: _Run) -> Progress:
    """Restore everything from ``checkpoints/last`` if it exists, then wrap the model for DDP."""
    progress = Progress()
    if run.info.is_main:
        run.ckpt.exists("last")  # finish a swap a kill interrupted, once, before the other ranks look
    barrier(run.info)
    if run.ckpt.exists("last"):
        state = _load_last(run)
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.train_loader.load_state_dict(state["loader"])
        run.task.load_state_dict(state.get("task", {}))
        set_rng_state(state["rng"])
        progress = Progress(num_updates=int(state["num_updates"]), best=float(state["best"]),
                            nonfinite_skipped=int(state["nonfinite_skipped"]),
                            previous_seconds=float(state.get("train_seconds", 0.0)),
                            previous_cpu_seconds=float(state.get("train_cpu_seconds", 0.0)),
                            bad_items=dict(state.get("bad_items", {})))
        progress.out_of_time = _over_budget(progress, run.cfg, now=False)  # the same on every rank
        # continue the epoch the sampler was in (state["epoch"] is already past it when a run ended by
        # max_epoch), or the next one when it was saved on that epoch's last batch
        loader_state = run.train_loader.state_dict()
        progress.epoch = int(loader_state["epoch"]) + int(loader_state["position"] >= len(run.train_loader))
        if run.info.is_main:
            log.info("resumed from %s at update %d (epoch %d)", run.ckpt.path("last"), progress.num_updates,
                     progress.epoch)
    # the schedules as they were during the last update, so a validation before the next update sees
    # what an uninterrupted run's saw
    run.task.before_update(run.model, max(progress.num_updates - 1, 0))
    if progress.bad_items:
        _write_bad_items(run, progress)  # the file may hold lines from after the checkpoint: rewrite it
    run.ddp_model = run.model
    if run.info.enabled and not run.sharded:
        run.ddp_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=run.cfg.find_unused_parameters,
        )
    return progress


def _load_last(run: _Run) -> dict[str, Any]:
    """``checkpoints/last`` into model and optimizer; returns its trainer state. An FSDP checkpoint is read
    from its DCP shards (at any number of ranks), a DDP one from ``model.safetensors`` and the state file."""
    directory = run.ckpt.path("last")
    written = "fsdp" if has_shards(directory) else "ddp"
    if written != ("fsdp" if run.sharded else "ddp"):
        now = "trainer.strategy=fsdp" if run.sharded else f"trainer.strategy={run.cfg.strategy} on {run.info.world_size} " \
            "process(es)"
        raise ValueError(f"{directory} was written by a trainer.strategy={written} run and this one is {now}: resume "
                         f"with trainer.strategy={written}" + (" on more than one process" if written == "fsdp" else "")
                         + ", or start a new experiment from its weights")
    if not run.sharded:
        state = run.ckpt.load("last", run.model, map_location="cpu")
        run.model.to(run.device)
        load_optimizer_state(run.optimizer, state["optimizer"])
        return state
    load_shards(run.model, run.optimizer, directory)
    return run.ckpt.load_state("last")


def _train_step(run: _Run, group: list[tuple[int, dict[str, Any]]], progress: Progress, stop: bool) -> _Step:
    """One update: forward/backward over the group's micro-batches, gradients normalised by the global
    sample size, clipped, optimizer step (skipped when non-finite). Unreadable items were left out of
    their batches by the collater; they are recorded here. ``stop`` (this rank's preemption flag) is
    summed over ranks with the sample size, so every rank learns of it at the same update."""
    run.task.before_update(run.model, progress.num_updates)
    info, device = run.info, run.device
    sample_size, stats, bad = 0, {}, []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, (position, batch) in enumerate(group):
        bad += batch.pop("bad", [])
        if batch["source"].shape[0] == 0:  # every item of this batch was unreadable
            if not info.enabled:
                continue
            batch = _stand_in(run, position)  # DDP: every rank must run backward; this one adds zero
        else:
            run.last_batch = batch
        seed = micro_seed(run.cfg.seed, progress.epoch, position * info.world_size + info.rank)
        torch.manual_seed(seed)
        generator = torch.Generator(device).manual_seed(seed + 1)
        audio_seconds = 0.0 if batch.get("stand_in") else float((~batch["padding_mask"]).sum()) / 16000.0
        batch = _to_device(batch, device)  # (counted on the host copy above: no wait for the device)
        # DDP: no gradient all-reduce before the last micro-batch. FSDP reduce-scatters every micro-batch into the
        # sharded gradients instead: skipping it would keep whole unsharded gradients, FSDP's memory saving lost
        accumulate = info.enabled and i < len(group) - 1
        assert run.ddp_model is not None
        layerdrop_seed = micro_seed(run.cfg.seed + 104_729, progress.epoch, position // run.cfg.update_freq)
        with run.ddp_model.no_sync() if accumulate and not run.sharded else contextlib.nullcontext():  # type: ignore[operator]
            with autocast_context(device, run.precision), shared_layerdrop(layerdrop_seed):
                out = run.task.forward(run.ddp_model, batch, generator)
            if batch.get("stand_in"):  # the same statistics keys as the other ranks' (they are summed), zeroed
                out = TaskOutput(loss=out.loss * 0.0, sample_size=0, stats=dict.fromkeys(out.stats, 0.0))
            run.scaler.scale(out.loss).backward()
        sample_size += out.sample_size
        loss_sum += out.loss.detach().double()
        _merge(stats, out.stats)
        _merge(stats, {"audio_seconds": audio_seconds})
    new_bad = [(path, reason) for _, path, reason in bad if path not in progress.bad_items]
    budget_share = _budget_share(progress, run.cfg)  # one clock reading for the stop and the schedule
    totals = all_reduce_sum(torch.tensor([float(sample_size), float(loss_sum), float(len(new_bad)), float(stop),
                                          float(budget_share >= 1.0), budget_share],
                                         dtype=torch.float64, device=device), info)
    if totals[2] > 0:
        _record_bad_items(run, progress, all_gather_objects(new_bad, info))
    grad_norm = _normalise_and_clip(run, total_size=float(totals[0]))
    total_loss = float(totals[1])
    finite = math.isfinite(total_loss) and math.isfinite(grad_norm)
    if finite or run.precision == "fp16":  # fp16: the scaler skips a non-finite step and lowers the scale
        run.scaler.step(run.optimizer)
        run.scaler.update()
    if finite:
        progress.consecutive_nonfinite = 0
    elif run.precision != "fp16":
        _count_nonfinite(run, progress, total_loss, grad_norm)
    run.optimizer.zero_grad(set_to_none=True)
    if not finite:
        run.scheduler.apply()
    return _Step(updated=finite, stats=stats, grad_norm=grad_norm, stop=bool(totals[3] > 0),
                 out_of_time=bool(totals[4] > 0), budget_share=float(totals[5]) / info.world_size)


def _stand_in(run: _Run, position: int) -> dict[str, Any]:
    """A batch whose loss the step multiplies by zero, so DDP's gradient all-reduce still sees this rank's
    backward: the last readable batch of this rank, or (before there is one) the first readable item of
    the training set."""
    if run.last_batch is None:
        dataset = run.train_loader.dataset
        for index in range(min(len(dataset), 1000)):
            item = dataset[index]
            if "bad" not in item:
                run.last_batch = dataset.collater([item])
                break
        else:
            raise BadDataError(f"rank {run.info.rank}: none of the first training items can be read (see "
                               f"bad_items.tsv, batch {position}); check the data with `speechcl prepare --verify`")
    assert run.last_batch is not None
    return run.last_batch | {"stand_in": True}


def _record_bad_items(run: _Run, progress: Progress, new: list[tuple[str, str]]) -> None:
    """Add newly found unreadable training files (from every rank), name them, and stop the run when
    they pass ``trainer.max_bad_item_share`` of the training set."""
    assert run.logger is not None
    for path, reason in new:
        if path not in progress.bad_items:
            progress.bad_items[path] = reason
            run.logger.warn(f"skipping an unreadable training item ({len(progress.bad_items)} so far): {path}: "
                            f"{reason}")
    _write_bad_items(run, progress)
    total = len(run.train_loader.dataset)
    if len(progress.bad_items) > run.cfg.max_bad_item_share * total:
        raise BadDataError(
            f"{len(progress.bad_items)} of {total} training items cannot be read (listed in "
            f"{run.exp_dir / 'bad_items.tsv'}), more than trainer.max_bad_item_share={run.cfg.max_bad_item_share}: "
            "fix or remove them (`speechcl prepare ... --verify` keeps them out of the manifests), or raise "
            "trainer.max_bad_item_share; rerunning resumes from the last checkpoint"
        )


def _write_bad_items(run: _Run, progress: Progress) -> None:
    if run.info.is_main:
        write_lines(run.exp_dir / "bad_items.tsv",
                    ["path\treason", *(f"{_one_field(path)}\t{_one_field(reason)}"
                                        for path, reason in sorted(progress.bad_items.items()))])


def _one_field(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _normalise_and_clip(run: _Run, total_size: float) -> float:
    """Scale the summed gradients by ``world_size / global sample size`` (DDP averaged them over ranks)
    and clip them to ``optim.clip_norm`` (0: no clipping); returns the norm before clipping."""
    run.scaler.unscale_(run.optimizer)
    params = [p for p in run.model.parameters() if p.requires_grad]
    factor = run.info.world_size / max(total_size, 1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)
    max_norm = run.clip_norm if run.clip_norm > 0 else math.inf
    return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm)))


def _count_nonfinite(run: _Run, progress: Progress, total_loss: float, grad_norm: float) -> None:
    """Count a skipped update; too many in a row stop the run with :class:`NonFiniteError`."""
    progress.nonfinite_skipped += 1
    progress.consecutive_nonfinite += 1
    assert run.logger is not None
    run.logger.warn(f"update {progress.num_updates + 1}: non-finite loss ({total_loss}) or gradient norm "
                    f"({grad_norm}); update skipped ({progress.nonfinite_skipped} so far)")
    if progress.consecutive_nonfinite >= run.cfg.max_consecutive_nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(
            f"{progress.consecutive_nonfinite} consecutive updates had a non-finite loss or gradient (last at "
            f"update {progress.num_updates + 1}); lower optim.lr, use trainer.precision=fp32 or bf16, enable "
            "optim.clip_norm, or check the data for silent/corrupt audio"
        )


def _log_train(run: _Run, progress: Progress, window: _Window, lr: float) -> None:
    """One ``train`` log line for the window, and the task's failure-mode warnings."""
    assert run.logger is not None
    sums, elapsed = window.sums, time.perf_counter() - window.start
    summary = run.task.summarize(sums)
    summary |= {"lr": lr, "grad_norm": sums["grad_norm_sum"] / max(sums["updates"], 1.0),
                "audio_s_per_s": sums.get("audio_seconds", 0.0) / max(elapsed, 1e-9),
                "nonfinite_skipped": float(progress.nonfinite_skipped)}
    if run.cfg.compile:  # graphs compiled so far: a count that keeps growing means recompilation per batch
        from speechcl.models.compile import compile_counters

        summary["compile_graphs"] = float(compile_counters()["graphs"])
    run.logger.log("train", progress.num_updates, summary)
    for message in run.task.check(summary, progress.num_updates):
        run.logger.warn(message)


def _validate(run: _Run, progress: Progress) -> dict[str, float] | None:
    """Validate (all ranks); a new best score saves ``last`` and copies it to ``best``. Returns the
    summary with ``improved`` (1.0 or 0.0), or ``None`` without a validation set."""
    if run.valid_loader is None:
        return None
    summary = evaluate(run.model, run.task, run.valid_loader, run.device, run.precision, run.cfg.seed, run.info)
    score = run.task.valid_score(summary)
    improved = score < progress.best
    if improved:
        progress.best = score
    assert run.logger is not None
    run.logger.log("valid", progress.num_updates, summary | {"best": progress.best})
    if improved:
        _save(run, progress)
        if run.info.is_main:
            run.ckpt.copy("last", "best")
    return summary | {"improved": float(improved)}


def _save(run: _Run, progress: Progress, keep: bool = False) -> None:
    """Write ``checkpoints/last`` (main process; every rank waits; with FSDP every rank writes its shards),
    and with ``keep`` a ``step_<N>`` copy."""
    state: dict[str, Any] = {}
    if run.info.is_main:
        state = {
            "num_updates": progress.num_updates, "epoch": progress.epoch, "best": progress.best,
            "nonfinite_skipped": progress.nonfinite_skipped, "train_seconds": progress.seconds(),
            "train_cpu_seconds": progress.cpu_seconds(),
            "optimizer": None if run.sharded else run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "loader": run.train_loader.state_dict(), "rng": rng_state(),
            "task": run.task.state_dict(), "bad_items": dict(progress.bad_items),
            "trainer": _plain(asdict(run.cfg)),
        }
    if run.sharded:
        weights = gather_full_weights(run.model) if run.cfg.fsdp_full_weights else None
        run.ckpt.save_sharded("last", run.model, state, lambda tmp: save_shards(run.model, run.optimizer, tmp),
                              run.info, weights=weights, extra_config=run.extra_config or None)
    elif run.info.is_main:
        run.ckpt.save("last", run.model, state, extra_config=run.extra_config or None)
    if run.info.is_main:
        if keep:
            run.ckpt.copy("last", f"step_{progress.num_updates:08d}")
            run.ckpt.prune()
    barrier(run.info)


def _plain(value: Any) -> Any:
    """Dataclass-free, tuple-free copy for JSON and ``weights_only`` pickles."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
