"""Per-rank memory of parameters, gradients and optimizer states: ``trainer.strategy=fsdp`` vs ``ddp``.

For each strategy the script launches ``torchrun --nproc-per-node R`` (gloo on CPU, NCCL where CUDA is
available and ``--device cuda``) on itself. Every rank builds the same ``Wav2Vec2ForPretraining`` preset,
wraps it as the trainer does (``DistributedDataParallel``, or :func:`speechcl.training.sharding.shard_model`),
builds the trainer's AdamW, and takes one real pretraining step (masks, distractors, Gumbel quantizer,
contrastive loss, backward, optimizer step) on ``--seconds`` of noise, so the optimizer states exist. It then
counts the bytes each rank holds in its own storage: parameters (an FSDP rank holds its shard of each),
gradients, and optimizer states (AdamW's two moments and step counters). This is the memory the strategy
changes; activations and DDP's gradient buckets are left out (activations do not depend on the strategy,
the buckets would only add to DDP's side).

Printed: one row per strategy (MiB per rank, the largest rank) and FSDP's share of DDP's for each state.
With R ranks FSDP holds about 1/R of DDP's parameters and optimizer states.

Usage::

    python tools/bench_fsdp_memory.py [--preset base] [--ranks 2] [--seconds 2] [--device cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 2**20
STATES = ("parameters", "gradients", "optimizer")


def _local_bytes(tensor) -> int:  # noqa: ANN001 - a Tensor or DTensor
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def worker(args: argparse.Namespace) -> None:
    """One rank: build, wrap, one step, count; rank 0 writes every rank's counts to ``args.out``."""
    import torch

    from speechcl.models.config import preset
    from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
    from speechcl.objectives.contrastive import wav2vec2_loss
    from speechcl.training.distributed import all_gather_objects, cleanup, init_distributed
    from speechcl.training.sharding import shard_model
    from speechcl.training.trainer import OptimConfig, build_optimizer

    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if args.device == "cuda" else "cpu")
    info = init_distributed(device)
    torch.manual_seed(1)
    # no layerdrop: a layer skipped by every rank leaves DDP (without find_unused_parameters) waiting for its
    # gradients; the states counted here do not depend on it
    model = Wav2Vec2ForPretraining(preset(args.preset, layerdrop=0.0)).to(device).train()
    if args.strategy == "fsdp":
        shard_model(model, "fp32")
        wrapped = model
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, OptimConfig())
    generator = torch.Generator(device).manual_seed(1 + info.rank)
    wave = torch.randn(1, int(16000 * args.seconds), generator=generator, device=device)
    loss = wav2vec2_loss(wrapped(wave, None, generator=generator)).loss
    loss.backward()
    counts = {
        "parameters": sum(_local_bytes(p) for p in model.parameters()),
        "gradients": sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None),
    }
    optimizer.step()
    counts["optimizer"] = sum(_local_bytes(v) for state in optimizer.state.values() for v in state.values()
                              if isinstance(v, torch.Tensor))
    counts["numel"] = sum(p.numel() for p in model.parameters())  # the whole model's (DTensor: global)
    gathered = all_gather_objects([counts], info)
    if info.is_main:
        Path(args.out).write_text(json.dumps(gathered))
    cleanup(info)


def launch(strategy: str, args: argparse.Namespace, out: Path) -> list[dict]:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc-per-node", str(args.ranks), __file__, "--worker",
           "--strategy", strategy, "--preset", args.preset, "--seconds", str(args.seconds), "--device", args.device,
           "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{strategy} run did not finish within --timeout {args.timeout} s")
    if done.returncode != 0:
        sys.exit(f"{strategy} run failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", help="model preset (default base, 95M parameters)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio of the one training step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds each strategy's run may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.ranks < 2:
        parser.error(f"--ranks must be at least 2 (both strategies need a process group), got {args.ranks}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "fsdp"):
            ranks = launch(strategy, args, Path(tmp) / f"{strategy}.json")
            results[strategy] = {key: max(r[key] for r in ranks) for key in STATES} | {"numel": ranks[0]["numel"]}
    print(f"preset {args.preset} ({results['ddp']['numel']:,} parameters), {args.ranks} ranks on {args.device}; "
          "MiB per rank (the largest rank)")
    print("| strategy | " + " | ".join(STATES) + " | parameters + optimizer |")
    print("|---|" + "---|" * (len(STATES) + 1))
    for strategy, row in results.items():
        cells = [f"{row[k] / MIB:.1f}" for k in STATES] + [f"{(row['parameters'] + row['optimizer']) / MIB:.1f}"]
        print(f"| {strategy} | " + " | ".join(cells) + " |")
    share = {k: results["fsdp"][k] / max(results["ddp"][k], 1) for k in STATES}
    both = (results["fsdp"]["parameters"] + results["fsdp"]["optimizer"]) / \
        max(results["ddp"]["parameters"] + results["ddp"]["optimizer"], 1)
    print("fsdp / ddp: " + ", ".join(f"{k} {v:.3f}" for k, v in share.items()) + f", parameters + optimizer {both:.3f}"
          f" (1/{args.ranks} = {1 / args.ranks:.3f})")
    if args.json:
        from speechcl.utils.io import atomic_write_json

        atomic_write_json(Path(args.json), {"preset": args.preset, "ranks": args.ranks, "device": args.device,
                                            "bytes": results, "fsdp_share": share, "fsdp_share_params_optim": both})


if __name__ == "__main__":
    main()
