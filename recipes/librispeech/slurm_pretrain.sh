#!/bin/bash
# wav2vec 2.0 BASE pretraining on N nodes x 8 GPUs under SLURM: one torchrun per node, every rank streaming
# tar shards, checkpoints on a shared file system; a preempted or timed-out job requeues itself and resumes.
#
#   sbatch --nodes 4 recipes/librispeech/slurm_pretrain.sh /shared/shards/ls /shared/exp/w2v_base [overrides...]
#
# SHARDS is `speechcl prepare shards data/ls train-960 SHARDS` plus the same for dev-other; EXP must be
# on a file system every node sees (FSDP's shards are written there by every rank). Extra arguments are
# passed on to `speechcl pretrain` (e.g. trainer.strategy=fsdp, model=large). update_freq keeps fairseq's
# 64 GPU batches per update for any node count: 64 / (nodes x 8); on 16 nodes or more, max_tokens would have
# to shrink instead (not done here).
#
# Preemption: SLURM sends SIGTERM 120 s before the time limit (--signal); torchrun passes it on, every
# rank stops after the same update, saves checkpoints/last and exits 75; the script then requeues the job,
# which reruns this same command and resumes exactly where it stopped.
#SBATCH --job-name=w2v-base
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

shards=${1:?usage: sbatch [--nodes N] slurm_pretrain.sh SHARDS EXP [overrides...]}
exp=${2:?usage: sbatch [--nodes N] slurm_pretrain.sh SHARDS EXP [overrides...]}
shift 2
gpus=8
ranks=$((SLURM_JOB_NUM_NODES * gpus))
if [ $((64 % ranks)) -ne 0 ]; then
  echo "64 GPU batches per update do not split over $ranks GPUs: use 1, 2, 4 or 8 nodes" >&2; exit 2
fi
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)  # (sed reads it all: no SIGPIPE under pipefail)
mkdir -p "$exp"
started="$exp/.slurm-started-$SLURM_JOB_ID"
touch "$started"  # a checkpoint newer than this one means this attempt made progress

# srun starts one torchrun per node; the c10d rendezvous on the first node gathers them (the job id names it)
srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "$gpus" \
  --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" --rdzv-id "$SLURM_JOB_ID" \
  -m speechcl pretrain data.format=shards data.shards_dir="$shards" data.train_subset=train-960 \
  data.valid_subset=dev-other exp_dir="$exp" trainer.precision=bf16 trainer.update_freq=$((64 / ranks)) "$@" \
  && status=0 || status=$?

# finished (train_result.json is written at the end), or stopped: requeue when this attempt saved a newer
# checkpoint (a crash before any progress, e.g. a config error, is not retried forever)
state="$exp/checkpoints/last/trainer_state.pt"
if [ ! -f "$exp/train_result.json" ] && [ -n "$(find "$state" -newer "$started" 2>/dev/null)" ]; then
  echo "stopped with status $status before the end; requeueing job $SLURM_JOB_ID to resume from $exp/checkpoints/last"
  rm -f "$started"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
rm -f "$started"
exit "$status"
