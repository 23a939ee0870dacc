#!/usr/bin/env bash
# wav2vec 2.0 BASE on LibriSpeech: pretrain on 960 h without labels, fine-tune with CTC on 10 min, 1 h,
# 10 h and 100 h of labels, decode dev/test, print a WER table. Every step is a `speechcl` verb.
#
# Usage: recipes/librispeech/run.sh --root /data/LibriSpeech [options]
#
#   --root DIR           LibriSpeech root (holds train-clean-100/, ..., and optionally LibriLight's
#                        librispeech_finetuning/ for the official 10m/1h/10h sets)
#   --data DIR           manifests and labels (default data; delete it to rebuild)
#   --exp DIR            experiments (default exp)
#   --stage N            first stage to run (default 0)
#   --stop-stage N       last stage to run (default 4)
#   --subsets "S ..."    labeled subsets to fine-tune on, from 10m 1h 10h 100h (default all four)
#   --ngpu N             GPUs per run (torchrun when > 1); update_freq keeps fairseq's effective batch:
#                        64 GPU batches per pretraining update, 8 per fine-tuning update (default 1)
#   --lm FILE            also decode with beam search (500) and this KenLM/ARPA word LM; its weight and word
#                        score are chosen on dev-other (else dev-clean) from --lm-weights x --word-scores
#   --lm-weights "W ..." LM weights to try (default "1 1.5 2 2.5 3")
#   --word-scores "S ..." word scores to try (default "-1 0 1")
#   --build-lm           build a 4-gram ARPA LM from the pretraining transcripts and decode with it
#   --cpu                CPU-sized settings (pretrain_cpu / finetune_cpu configs, train-clean-100 as the
#                        unlabeled set, dev-clean for validation, a few hundred updates)
#   --synth MINUTES      first synthesize a LibriSpeech-layout corpus into --root (`speechcl synth`: MINUTES
#                        of training speech by 10 voices, 1 min dev-clean and test-clean by 3 unseen
#                        voices each); use with --cpu for an end-to-end run without downloads
#   --pretrain-args "…"  extra Hydra overrides for `speechcl pretrain` (win over the recipe's)
#   --finetune-args "…"  extra Hydra overrides for `speechcl finetune`
#
# Stages (each leaves a marker in <data>/.done or <exp>/.done and is skipped on a rerun; delete the
# marker to redo it; training itself resumes from its last checkpoint when interrupted):
#   0  prepare: manifests (.tsv), labels (.wrd/.ltr), dict.ltr.txt for every split under --root; LibriLight
#      sets when present, seeded random 10m/1h/10h subsets of train-clean-100 otherwise; train-960
#   1  pretrain: speechcl pretrain on train-960 (validation on dev-other) -> <exp>/pretrain
#   2  fine-tune: speechcl finetune --config-name finetune_base_<subset> from <exp>/pretrain/checkpoints/best
#      -> <exp>/finetune_<subset>, one per labeled subset
#   3  decode: speechcl evaluate on dev-clean, dev-other, test-clean, test-other (those prepared), greedy,
#      and with the LM when one is given -> <exp>/finetune_<subset>/decode[_lm]/summary.json
#   4  score: speechcl report -> <exp>/results.md (and results_lm.md); always rerun
#
# Examples:
#   recipes/librispeech/run.sh --root /data/LibriSpeech --ngpu 8
#   recipes/librispeech/run.sh --root /data/LibriSpeech --stage 2 --stop-stage 3 --subsets "10m 1h"
#   recipes/librispeech/run.sh --cpu --synth 10 --root /tmp/synth --data /tmp/synth_data --exp /tmp/synth_exp \
#     --subsets "10m 1h" --pretrain-args "model=tiny trainer.max_update=20" --finetune-args "trainer.max_update=10"
set -euo pipefail

root=""
data=data
exp=exp
stage=0
stop_stage=4
subsets="10m 1h 10h 100h"
ngpu=1
lm=""
build_lm=false
lm_weights="1 1.5 2 2.5 3"
word_scores="-1 0 1"
cpu=false
synth_minutes=""
pretrain_args=""
finetune_args=""
speechcl=${SPEECHCL:-speechcl}

usage() { sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage=$2; shift 2 ;;
    --subsets) subsets=$2; shift 2 ;;
    --ngpu) ngpu=$2; shift 2 ;;
    --lm) lm=$2; shift 2 ;;
    --build-lm) build_lm=true; shift ;;
    --lm-weights) lm_weights=$2; shift 2 ;;
    --word-scores) word_scores=$2; shift 2 ;;
    --cpu) cpu=true; shift ;;
    --synth) synth_minutes=$2; shift 2 ;;
    --pretrain-args) pretrain_args=$2; shift 2 ;;
    --finetune-args) finetune_args=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$root" ]; then echo "--root is required (see --help)" >&2; exit 2; fi
for s in $subsets; do
  case "$s" in 10m|1h|10h|100h) ;; *) echo "unknown subset $s (10m, 1h, 10h or 100h)" >&2; exit 2 ;; esac
done
if [ -n "$lm" ] && $build_lm; then echo "--lm and --build-lm exclude each other" >&2; exit 2; fi

# ---- settings: full LibriSpeech (fairseq BASE) or CPU-sized ----
if $cpu; then
  pretrain_subset=train-clean-100   # the synthetic corpus has one training split
  pt_config=pretrain_cpu; pt_valid=dev-clean; ft_valid=dev-clean
  pt_defaults="trainer.max_update=200"
  ft_defaults="trainer.max_update=100 model.freeze_finetune_updates=20"
  ngpu=1
else
  pretrain_subset=train-960         # train-clean-100 + train-clean-360 + train-other-500
  pt_config=pretrain; pt_valid=dev-other; ft_valid=dev-other
  if [ $((64 % ngpu)) -ne 0 ] || [ $((8 % ngpu)) -ne 0 ]; then
    echo "--ngpu must divide 8 (fairseq's 64 pretraining / 8 fine-tuning GPU batches per update)" >&2; exit 2
  fi
  pt_defaults="trainer.update_freq=$((64 / ngpu))"
  ft_defaults="trainer.update_freq=$((8 / ngpu))"
fi
ft_config() { if $cpu; then echo finetune_cpu; else echo "finetune_base_$1"; fi; }

launch() {  # launch VERB ARGS...: one process, or torchrun with --ngpu ranks
  if [ "$ngpu" -gt 1 ]; then
    torchrun --standalone --nproc_per_node "$ngpu" -m speechcl "$@"
  else
    $speechcl "$@"
  fi
}

labeled_manifest() {  # the manifest name of a labeled subset: LibriLight's when prepared, else a random one
  case "$1" in
    100h) echo train-clean-100 ;;
    *) if [ -f "$data/librilight-$1.tsv" ]; then echo "librilight-$1"; else echo "train-clean-100-$1"; fi ;;
  esac
}

eval_manifests() {  # the prepared evaluation sets
  local s
  for s in dev-clean dev-other test-clean test-other; do
    if [ -f "$data/$s.tsv" ]; then echo "$data/$s.tsv"; fi
  done
}

selected() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
pending() {  # pending MARKER_DIR NAME: true unless NAME is marked done
  if [ -e "$1/.done/$2" ]; then echo "  $2: done already (remove $1/.done/$2 to redo)"; return 1; fi
  return 0
}
mark() { mkdir -p "$1/.done"; touch "$1/.done/$2"; }
say() { echo "=== stage $1: $2 ($(date +%H:%M:%S))"; }

if selected 0; then
  say 0 prepare
  if [ -n "$synth_minutes" ] && pending "$data" synth; then
    $speechcl synth "$root" --minutes "$synth_minutes" --speakers 10 --heldout-speakers 3 \
      --dev-minutes 1 --test-minutes 1 --seed 0
    mark "$data" synth
  fi
  if pending "$data" prepare; then
    # random subsets are nested (10m in 1h in 10h); they stand in for LibriLight's sets when those are absent
    $speechcl prepare librispeech "$root" "$data" --seed 0 \
      --subset train-clean-100:10m --subset train-clean-100:1h --subset train-clean-100:10h
    if [ "$pretrain_subset" = train-960 ]; then
      parts=(train-clean-100 train-clean-360 train-other-500)
      for p in "${parts[@]}"; do
        if [ ! -f "$data/$p.tsv" ]; then
          echo "$data/$p.tsv missing: train-960 needs all three training splits under $root" >&2; exit 1
        fi
      done
      $speechcl prepare combine "$data" train-960 "${parts[@]}"
    fi
    mark "$data" prepare
  fi
fi

if selected 1; then
  say 1 pretrain
  if pending "$exp" pretrain; then
    # shellcheck disable=SC2086
    launch pretrain --config-name "$pt_config" data.manifest_dir="$data" data.train_subset="$pretrain_subset" \
      data.valid_subset="$pt_valid" exp_dir="$exp/pretrain" $pt_defaults $pretrain_args
    mark "$exp" pretrain
  fi
fi

if selected 2; then
  say 2 fine-tune
  for s in $subsets; do
    if pending "$exp" "finetune_$s"; then
      # shellcheck disable=SC2086
      launch finetune --config-name "$(ft_config "$s")" data.manifest_dir="$data" \
        data.train_subset="$(labeled_manifest "$s")" data.valid_subset="$ft_valid" \
        model.init="$exp/pretrain/checkpoints/best" exp_dir="$exp/finetune_$s" $ft_defaults $finetune_args
      mark "$exp" "finetune_$s"
    fi
  done
fi

if selected 3; then
  say 3 decode
  mapfile -t sets < <(eval_manifests)
  if [ "${#sets[@]}" -eq 0 ]; then echo "no dev/test manifests in $data: run stage 0" >&2; exit 1; fi
  tune=()  # the split that chooses the LM weight and word score (none without a dev set: the first values)
  for d in dev-other dev-clean; do
    if [ -f "$data/$d.tsv" ]; then tune=(--tune-on "$d"); break; fi
  done
  if [ "${#tune[@]}" -eq 0 ]; then read -r lm_weights _ <<< "$lm_weights"; read -r word_scores _ <<< "$word_scores"; fi
  if $build_lm; then
    lm=$data/lm/4gram.arpa
    if pending "$data" lm; then
      mkdir -p "$data/lm"
      $speechcl lm build --text "$data/$pretrain_subset.wrd" --out "$lm" --order 4 --dict "$data/dict.ltr.txt"
      mark "$data" lm
    fi
  fi
  for s in $subsets; do
    model=$exp/finetune_$s/checkpoints/best
    if pending "$exp" "decode_$s"; then
      $speechcl evaluate --model "$model" --manifest "${sets[@]}" --output "$exp/finetune_$s/decode" --quiet
      mark "$exp" "decode_$s"
    fi
    if [ -n "$lm" ] && pending "$exp" "decode_lm_$s"; then
      # shellcheck disable=SC2086
      $speechcl evaluate --model "$model" --manifest "${sets[@]}" --beam 500 --lm "$lm" \
        --lm-weight $lm_weights --word-score $word_scores "${tune[@]}" --output "$exp/finetune_$s/decode_lm" --quiet
      mark "$exp" "decode_lm_$s"
    fi
  done
fi

if selected 4; then
  say 4 score
  dirs=(); names=()
  for s in $subsets; do dirs+=("$exp/finetune_$s"); names+=("$s"); done
  $speechcl report "${dirs[@]}" --names "${names[@]}" --output "$exp/results.md"
  echo "(greedy decoding, no LM; WER/CER in %; written to $exp/results.md)"
  if [ -n "$lm" ] || $build_lm; then
    $speechcl report "${dirs[@]}" --names "${names[@]}" --decode-dir decode_lm --output "$exp/results_lm.md"
    echo "(beam 500 with the LM, its weights chosen on a dev set: decode_lm/tune.json; written to $exp/results_lm.md)"
  fi
fi
