#!/usr/bin/env bash
# stage 2 of recipes/synthetic/run.sh --setting full --objective hubert, run by hand on ONE thread
# (the recipe's own stage 2 would use both cores; the other core is busy with recipes/objectives)
set -euo pipefail
out=/work/runs/synthetic-full-hubert; data=$out/data
speechcl="/work/main/.venv/bin/python -m speechcl"
export OMP_NUM_THREADS=2
[ -e "$data/km.json" ] || $speechcl cluster "$data" --splits train-clean-100 dev-clean --features mfcc --ext km --no-progress --num-clusters 100
$speechcl pretrain --allow-config-change --config-name pretrain_cpu data.manifest_dir="$data" data.train_subset=train-clean-100 \
  data.valid_subset=dev-clean exp_dir="$out/pretrain" trainer.max_update=12000 \
  objective=hubert optim.lr=0.001 objective.unmasked_weight=0.5 objective.feature_pen_weight=0 \
  trainer.valid_interval=400 trainer.save_interval=200 trainer.threads=2
touch "$out/.done/2-pretrain"
cd /work/main && SPEECHCL="$speechcl" bash recipes/synthetic/run.sh --setting full --objective hubert --out "$out" --stage 3
