"""The training loop shared by pretraining and fine-tuning.

Read top to bottom: set-up (device, ranks, optimizer, schedule, scaler, checkpoints, resume), then
``for epoch: for group of update_freq batches: forward/backward each, normalise, clip, step``, with
validation, logging and checkpointing on the main process.

Gradient normalisation follows fairseq: losses are *sums* over masked steps (or frames); the gradients
of all micro-batches on all ranks are summed and divided by the global sample size. DDP averages over
ranks, so gradients are multiplied by ``world_size / global_sample_size``.

Randomness: every micro-batch reseeds the global RNG and a private generator from
``(seed, epoch, global batch number)``. Masks, distractors, Gumbel noise, dropout and layerdrop are then
a function of the data position only, so a resumed run follows the uninterrupted trajectory and one
process with ``update_freq = N`` matches N processes exactly.
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
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from speechcl.data.loader import ResumableLoader
from speechcl.training.checkpoints import CheckpointManager, rng_state, set_rng_state
from speechcl.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from speechcl.training.metrics import MetricLogger
from speechcl.training.schedules import ScheduleConfig, Scheduler

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
    """Loop settings. ``max_update`` bounds the run; ``max_epoch`` (0 = unbounded) too."""

    max_update: int = 400_000
    max_epoch: int = 0
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
    tensorboard: bool = True
    find_unused_parameters: bool = False


@dataclass
class TaskOutput:
    """One micro-batch: the summed loss to back-propagate, its sample size, and statistics (sums)."""

    loss: Tensor
    sample_size: int
    stats: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    """What the loop needs from pretraining or fine-tuning."""

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...

    def valid_score(self, summary: dict[str, float]) -> float: ...  # lower is better

    def on_update(self, model: nn.Module, num_updates: int) -> None: ...

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]: ...  # failure-mode warnings


class NonFiniteError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=cpu")
    return device


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
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


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
    if not info.enabled:
        return stats
    keys = sorted(stats)
    values = all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device), info)
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
    """Train ``model`` on ``task`` until ``cfg.max_update`` updates (resuming from ``<exp_dir>/checkpoints/last``).

    Returns a summary: final update count, last train/valid summaries, skipped updates.
    """
    exp_dir = Path(exp_dir)
    device = resolve_device(cfg.device)
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

    torch.manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = Scheduler(optimizer, schedule_cfg, optim_cfg.lr, cfg.max_update)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    ckpt = CheckpointManager(exp_dir, keep_last=cfg.keep_last)

    num_updates, epoch, best, skipped = 0, 0, math.inf, 0
    previous_seconds = 0.0  # training wall time of earlier (interrupted) runs
    run_start = time.perf_counter()
    if info.is_main:
        ckpt.exists("last")  # finish a swap a kill interrupted, once, before the other ranks look
    barrier(info)
    if ckpt.exists("last"):
        state = ckpt.load("last", model, map_location="cpu")
        model.to(device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        num_updates = int(state["num_updates"])
        best, skipped = float(state["best"]), int(state["nonfinite_skipped"])
        previous_seconds = float(state.get("train_seconds", 0.0))
        # continue the epoch the sampler was in (state["epoch"] is already past it when a run ended by
        # max_epoch), or the next one when it was saved on that epoch's last batch
        epoch = int(train_loader.state_dict()["epoch"])
        if train_loader.state_dict()["position"] >= len(train_loader):
            epoch += 1
        if info.is_main:
            log.info("resumed from %s at update %d (epoch %d)", ckpt.path("last"), num_updates, epoch)
    task.on_update(model, num_updates)

    ddp_model: nn.Module = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    logger = MetricLogger(exp_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, total=cfg.max_update,
                          start=num_updates)

    def save(tag_extra: bool) -> None:
        if info.is_main:
            state = {
                "num_updates": num_updates, "epoch": epoch, "best": best, "nonfinite_skipped": skipped,
                "train_seconds": previous_seconds + time.perf_counter() - run_start,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "loader": train_loader.state_dict(), "rng": rng_state(),
                "trainer": _plain(asdict(cfg)),
            }
            extra = dict(checkpoint_extra or {})
            if run_config:
                extra["run"] = run_config
            ckpt.save("last", model, state, extra_config=extra or None)
            if tag_extra:
                ckpt.copy("last", f"step_{num_updates:08d}")
                ckpt.prune()
        barrier(info)

    def validate() -> dict[str, float] | None:
        nonlocal best
        if valid_loader is None:
            return None
        summary = evaluate(model, task, valid_loader, device, precision, cfg.seed, info)
        score = task.valid_score(summary)
        improved = score < best
        if improved:
            best = score
        logger.log("valid", num_updates, summary | {"best": best})
        return summary | {"improved": float(improved)}

    consecutive_bad = 0
    window: dict[str, float] = {}
    window_start = time.perf_counter()
    last_valid: dict[str, float] | None = None
    done = num_updates >= cfg.max_update
    while not done and (cfg.max_epoch <= 0 or epoch < cfg.max_epoch):
        train_loader.set_epoch(epoch)
        for group in _groups(train_loader, cfg.update_freq):
            # ---- forward/backward over the micro-batches of this update ----
            task.on_update(model, num_updates)
            sample_size, stats = 0, {}
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for i, (position, batch) in enumerate(group):
                global_batch = position * info.world_size + info.rank
                seed = micro_seed(cfg.seed, epoch, global_batch)
                torch.manual_seed(seed)
                generator = torch.Generator(device).manual_seed(seed + 1)
                batch = _to_device(batch, device)
                sync = info.enabled and i < len(group) - 1
                with ddp_model.no_sync() if sync else contextlib.nullcontext():
                    with autocast_context(device, precision):
                        out = task.forward(ddp_model, batch, generator)
                    scaler.scale(out.loss).backward()
                sample_size += out.sample_size
                loss_sum += out.loss.detach().double()
                _merge(stats, out.stats)
                _merge(stats, {"audio_seconds": float((~batch["padding_mask"]).sum()) / 16000.0})
            # ---- normalise by the global sample size, clip, step ----
            totals = all_reduce_sum(torch.tensor([float(sample_size), float(loss_sum)], dtype=torch.float64,
                                                 device=device), info)
            total_size, total_loss = float(totals[0]), float(totals[1])
            scaler.unscale_(optimizer)
            factor = info.world_size / max(total_size, 1.0)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(factor)
            max_norm = optim_cfg.clip_norm if optim_cfg.clip_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            finite = math.isfinite(total_loss) and math.isfinite(grad_norm)
            if not finite and precision == "fp16":
                scaler.step(optimizer)  # the scaler skips the step and lowers the scale
                scaler.update()
            elif not finite:
                skipped += 1
                consecutive_bad += 1
                logger.warn(f"update {num_updates + 1}: non-finite loss ({total_loss}) or gradient norm "
                            f"({grad_norm}); update skipped ({skipped} so far)")
                if consecutive_bad >= cfg.max_consecutive_nonfinite:
                    optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteError(
                        f"{consecutive_bad} consecutive updates had a non-finite loss or gradient (last at update "
                        f"{num_updates + 1}); lower optim.lr, use trainer.precision=fp32 or bf16, enable "
                        "optim.clip_norm, or check the data for silent/corrupt audio"
                    )
            else:
                scaler.step(optimizer)
                scaler.update()
                consecutive_bad = 0
            optimizer.zero_grad(set_to_none=True)
            if not finite:  # no update happened: nothing to log (its stats may be NaN), validate or save
                scheduler.apply()
                continue
            num_updates += 1
            lr = scheduler.step()
            logger.progress(num_updates)
            # ---- logging, validation, checkpoints ----
            stats = _reduce_stats(stats, info, device)
            _merge(window, stats | {"grad_norm_sum": grad_norm, "updates": 1.0})
            if num_updates % cfg.log_interval == 0 or num_updates >= cfg.max_update:
                elapsed = time.perf_counter() - window_start
                summary = task.summarize(window)
                summary |= {"lr": lr, "grad_norm": window["grad_norm_sum"] / max(window["updates"], 1.0),
                            "audio_s_per_s": window.get("audio_seconds", 0.0) / max(elapsed, 1e-9),
                            "nonfinite_skipped": float(skipped)}
                logger.log("train", num_updates, summary)
                for message in task.check(summary, num_updates):
                    logger.warn(message)
                window, window_start = {}, time.perf_counter()
            done = num_updates >= cfg.max_update
            if cfg.valid_interval > 0 and num_updates % cfg.valid_interval == 0 and not done:
                last_valid = validate()
                if last_valid is not None and last_valid["improved"]:
                    save(False)
                    if info.is_main:
                        ckpt.copy("last", "best")
            keep = cfg.keep_interval_updates > 0 and num_updates % cfg.keep_interval_updates == 0
            if (cfg.save_interval > 0 and num_updates % cfg.save_interval == 0) or keep or done:
                save(keep)
            if done:
                break
        else:
            epoch += 1
            continue
        break

    last_valid = validate()
    if last_valid is not None and last_valid["improved"]:
        save(False)  # on every rank: save() ends with a barrier
        if info.is_main:
            ckpt.copy("last", "best")
    elif not done:
        save(False)
    logger.close()
    result = {"num_updates": num_updates, "epoch": epoch, "nonfinite_skipped": skipped, "valid": last_valid,
              "train_seconds": previous_seconds + time.perf_counter() - run_start,
              "best": best}
    if info.is_main:
        (exp_dir / "train_result.json").write_text(json.dumps(_plain(result), indent=2) + "\n")
    return result


def _plain(value: Any) -> Any:
    """Dataclass-free, tuple-free copy for JSON and ``weights_only`` pickles."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
