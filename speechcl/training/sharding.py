"""``trainer.strategy=fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) for every speechcl model, and its
checkpoints through ``torch.distributed.checkpoint`` (DCP).

What is sharded: each transformer layer and each convolutional feature encoder is its own FSDP unit (its
parameters are gathered just before it runs and freed after), and the root module holds the rest (positional
convolution, projections, quantizer, heads). A method's EMA teacher or key encoder is a copy of the same
modules, so it is sharded the same way and :func:`~speechcl.methods.base.ema_update_` works shard by shard;
buffers (queues, memory banks) are not sharded: every rank keeps the whole buffer, which the methods keep
identical across ranks by gathering keys from every rank.

Precision: with ``trainer.precision=bf16`` the gathered parameters are bfloat16 while the sharded masters,
the optimizer states and the gradient reduce-scatter stay float32 (``MixedPrecisionPolicy``); autocast still
runs on top, so the operations it keeps in float32 (norms, softmax, the losses) stay there.

Checkpoints (``checkpoints/<tag>/``): ``dcp/`` holds model and optimizer state as DCP shards written by every
rank (readable at any world size); ``trainer_state.pt`` the rest of the trainer state; ``model.safetensors``
the gathered full weights (``trainer.fsdp_full_weights``, default on), so :func:`speechcl.api.load_model`
and every other command read the checkpoint as they read a DDP one. Without them, :func:`export_weights`
(``speechcl convert CKPT OUT``) writes them from ``dcp/`` in one process, no process group needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from speechcl.models.checkpoint import (
    DCP_DIR,
    dcp_error_reason,
    load_dcp_weights,
    model_from_config,
    read_config,
    save_checkpoint,
)
from speechcl.models.context import TransformerLayer
from speechcl.models.feature_encoder import FeatureEncoder


def shard_model(model: nn.Module, precision: str) -> int:
    """Apply FSDP2 to ``model`` in place: every :class:`TransformerLayer` and :class:`FeatureEncoder`, then the
    root. Rank 0's parameters and buffers are broadcast first (as DDP does), so every rank shards the same
    weights. Needs an initialised process group; returns the number of FSDP units below the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise RuntimeError("shard_model needs an initialised process group (launch with torchrun)")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None,
                                  reduce_dtype=torch.float32)
    units = [m for m in model.modules() if isinstance(m, (TransformerLayer, FeatureEncoder))]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return len(units)


def full_tensor(value: Tensor) -> Tensor:
    """A DTensor's whole value (a plain tensor unchanged): e.g. the gradient norm ``clip_grad_norm_`` returns."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write model and optimizer state as DCP shards under ``directory/dcp`` (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / DCP_DIR))


def load_shards(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load ``directory/dcp`` into the sharded ``model`` and its ``optimizer`` (every rank calls it; the shards
    may come from another number of ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    source = directory / DCP_DIR
    if not (source / ".metadata").exists():
        raise FileNotFoundError(f"{source} holds no DCP checkpoint (no .metadata): the checkpoint was not written "
                                "with trainer.strategy=fsdp, or its save was cut short")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(state, checkpoint_id=str(source))
    except CheckpointException as err:  # a BaseException: name the folder instead of a traceback per rank
        raise ValueError(f"cannot resume from the DCP shards in {source} ({dcp_error_reason(err)}); the checkpoint may be incomplete: "
                         "remove checkpoints/last to restart from scratch, or copy a complete one into its place") from err
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def gather_full_weights(model: nn.Module) -> dict[str, Tensor]:
    """The whole state dict of a sharded ``model`` on rank 0's CPU (every rank calls it; the others get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def has_shards(directory: str | Path) -> bool:
    return (Path(directory) / DCP_DIR / ".metadata").exists()


def export_weights(checkpoint: str | Path, output: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``output`` from an FSDP checkpoint's ``dcp/`` shards,
    in this process (no process group; any number of ranks may have written them). The model is rebuilt from
    the checkpoint's ``config.json``, whose other entries (labels, run configuration) are kept. The same as
    ``speechcl convert CHECKPOINT OUTPUT``."""
    checkpoint = Path(checkpoint)
    if not has_shards(checkpoint):
        raise FileNotFoundError(f"{checkpoint / DCP_DIR} holds no DCP checkpoint (no .metadata); expected a "
                                "checkpoint directory written with trainer.strategy=fsdp")
    meta = read_config(checkpoint)
    model = model_from_config(meta, str(checkpoint / "config.json"))
    load_dcp_weights(model, checkpoint / DCP_DIR)
    kept = {k: v for k, v in meta.items() if k not in ("format", "version", "architecture", "model", "vocab_size",
                                                         "objective")}
    return save_checkpoint(model, output, extra=kept)
