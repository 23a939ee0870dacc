#!/usr/bin/env bash
# Pretraining objectives compared on one synthetic corpus: every method of `speechcl pretrain objective=...`
# (and a randomly initialised encoder as the floor) trains the same preset for the same budget of CPU time,
# then each encoder is judged the same way: frozen probes per layer, invariance to transformations, CTC
# fine-tuning on the same labeled minutes, and decoding with and without a word LM.
#
# Usage: recipes/objectives/run.sh [--setting tiny|quick|full] [--out DIR] [--stage N] [--stop-stage N]
#                                  [--methods "m1 m2 ..."] [--jobs J] [--probes "phone ctc speaker keyword"]
#
#   --setting quick  (default) a smoke run: 3 minutes of pretraining per method, about 30-40 min with --jobs 2
#   --setting full   the comparison: 20 CPU-minutes of pretraining per method, the README's 20-minute corpus
#   --setting tiny   what the default test runs: a few updates of the tiny preset (numbers are meaningless)
#   --out DIR        experiment folder (default exp/objectives-<setting>)
#   --methods "..."  a subset of: wav2vec2 wav2vec cpc simclr moco pirl byol data2vec hubert bestrq random
#                    (default: all of them, in this order, which is the order they are run in; random = the same
#                    preset, randomly initialised, not pretrained)
#   --jobs J         pieces run side by side (default 1). Each pretraining job runs on one thread and its budget
#                    is CPU time (trainer.budget_clock=cpu), so sharing cores costs wall time, not updates
#   --probes "..."   probe tasks (default: all four; tiny: phone)
#
# Stages (each leaves DIR/.done/<stage>-<name>[-<method or corpus>] and is skipped on a rerun; delete a marker
# to redo that piece; an interrupted pretraining or fine-tuning run resumes from its checkpoint):
#   0  synthesize the corpus (speechcl synth --conditions --lm-sentences: unseen dev/test voices, condition-
#      shifted test splits, LM text) and, for the keyword probe, a keyword corpus (speechcl synth --keywords)
#   1  prepare manifests and labels (speechcl prepare librispeech, with a seeded labeled subset of the training
#      split: 10 minutes, tiny 1; speechcl prepare keywords)
#   2  MFCC k-means frame labels for hubert (speechcl cluster; only when hubert is among the methods)
#   3  pretrain each method for the setting's budget -> DIR/<method>/pretrain (random: 0 updates, which saves
#      the initialised model)
#   4  frozen probes per layer and for the weighted sum of layers -> DIR/<method>/probes/<task>
#   5  invariance of each layer to transformations of test-clean -> DIR/<method>/invariance
#   6  CTC fine-tuning on the labeled subset, the same updates for every method -> DIR/<method>/finetune
#   7  decode dev-clean and test-clean: greedy (finetune/decode) and beam search with a 4-gram word LM whose
#      weights are chosen on dev-clean (finetune/decode_lm)
#   8  the comparison: DIR/results.md and its figures (speechcl compare)
# Logs of the per-method (and per-corpus) jobs: DIR/logs/<stage>-<name>-<method>.log.
set -euo pipefail

all_methods="wav2vec2 wav2vec cpc simclr moco pirl byol data2vec hubert bestrq random"
all_probes="phone ctc speaker keyword"
setting=quick
out=""
stage=0
stop_stage=100
methods=$all_methods
jobs=1
probes=""
speechcl=${SPEECHCL:-speechcl}

while [ $# -gt 0 ]; do
  case "$1" in
    --setting) setting=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --probes) probes=$2; shift 2 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Per-method overrides for short CPU runs, from the README's "Pretraining objectives" section: its 15.6-16.4
# CPU-minute runs (pretrain_cpu, model=small, one thread, the 20-minute corpus of the full setting) and the
# configs' comments (conf/objective/*.yaml). Not stated in so many words there, and read off the logged chance
# levels of those runs: simclr's 2 s crops and 16 items per update (chance 0.032 = 1/(2N-1), N = 16, as pirl's
# 512000-sample batches of 32000-sample crops), moco's 8 items (chance 0.125 among the batch's keys: 2 s crops in
# pretrain_cpu's 256000 samples), pirl's 256 negatives (chance 0.007: the distinct rows of 256 draws from 197).
# hubert: the README names no warmup, so pretrain_cpu's 100 updates apply as for every method.
# byol: its guard is lowered from 0.05 to 0.01. In the full setting, with the defaults (and again with optim.lr=2e-4
# objective.ema_decay=0.996), the encoder's pooled output shrank towards one shared vector (repr_std 0.0024 < 0.0031
# at update 425; 0.0031 at 850) and the default guard stopped the run; the lowered one still stops a total collapse,
# and the table then shows what such an encoder is worth downstream.
declare -A method_overrides=(
  [wav2vec2]=""
  [wav2vec]=""
  [cpc]=""
  [simclr]="data.max_sample_size=32000 data.max_tokens=512000"
  [moco]="objective.queue_size=512 objective.momentum=0.99 data.max_sample_size=32000"
  [pirl]="objective.loss=infonce objective.temperature=0.2 objective.num_negatives=256 optim.lr=0.0002 data.max_sample_size=32000 data.max_tokens=512000"
  [byol]="objective.collapse_std=0.01"
  [data2vec]="objective.ema_decay=0.99 objective.ema_end_decay=0.999 objective.ema_updates=400"
  [hubert]="optim.lr=0.001 objective.unmasked_weight=0.5 objective.feature_pen_weight=0"
  [bestrq]="objective.codebook_size=256 objective.mask_length=10 objective.mask_prob=0.05"
  [random]=""
)

# Settings. Pretraining budget: trainer.max_minutes is the same budget of the training process's CPU time for every
# method (trainer.budget_clock=cpu: one thread, so CPU minutes and wall minutes agree on an idle core), counted over
# resumed parts; trainer.max_update caps it and sets the learning-rate schedule's length (linear decay to 0 at the
# cap), the same for every method: about twice the updates the fastest method makes in the budget, so the budget
# is what stops each run. Fine-tuning: the same updates for every method (finetune_cpu; a pretrained encoder at
# half the from-scratch learning rate, as recipes/synthetic chose on dev).
ft_lr_pretrained=0.0005
case "$setting" in
  tiny)
    minutes=1.5; speakers=4; heldout=2; devtest=0.25; condition_minutes=0.1; lm_sentences=300; labeled=1m
    kw_args="--speakers 4 --heldout-speakers 2 --per-word 2"
    preset=tiny
    pt_budget="trainer.max_update=3"
    pt_extra="model=tiny data.max_sample_size=32000 data.max_tokens=128000 trainer.valid_interval=2 trainer.save_interval=2 trainer.tensorboard=false"
    cluster_args="--num-clusters 8 --n-init 1 --max-iter 10"
    default_probes="phone"; probe_args="--epochs 2 --max-utterances 8"
    inv_args="--max-files 4 --transforms identity noise_white_10dB speed_1.1"
    ft_updates=3
    ft_extra="model.preset=tiny data.max_tokens=160000 trainer.valid_interval=0 trainer.save_interval=0 trainer.tensorboard=false"
    beam=20; lm_weights="1 2"; word_scores="0" ;;
  quick)
    minutes=15; speakers=12; heldout=4; devtest=2; condition_minutes=1; lm_sentences=20000; labeled=10m
    kw_args="--speakers 12 --heldout-speakers 4 --per-word 20"
    preset=small
    pt_budget="trainer.max_minutes=3 trainer.budget_clock=cpu trainer.max_update=500"
    pt_extra="trainer.valid_interval=50 trainer.save_interval=50"
    cluster_args="--num-clusters 100"
    default_probes=$all_probes; probe_args="--epochs 10 --max-utterances 80"
    inv_args="--max-files 16 --transforms identity noise_white_10dB babble_10dB speed_1.1 pitch_+2st reverb_0.5s telephone polarity"
    ft_updates=150
    ft_extra="trainer.valid_interval=50 trainer.save_interval=50"
    beam=100; lm_weights="1 2"; word_scores="0 1" ;;
  full)
    # the corpus of the README's measured runs and probes: 20 minutes from 16 voices (197 utterances)
    minutes=20; speakers=16; heldout=8; devtest=5; condition_minutes=5; lm_sentences=100000; labeled=10m
    kw_args=""
    preset=small
    pt_budget="trainer.max_minutes=20 trainer.budget_clock=cpu trainer.max_update=4000"
    pt_extra="trainer.valid_interval=200 trainer.save_interval=100"
    cluster_args="--num-clusters 100"
    default_probes=$all_probes; probe_args=""
    inv_args="--max-files 16"
    ft_updates=600
    ft_extra="trainer.valid_interval=100 trainer.save_interval=100"
    beam=500; lm_weights="1 2 3"; word_scores="-1 0 1" ;;
  *) echo "unknown setting $setting (tiny, quick or full)" >&2; exit 2 ;;
esac
probes=${probes:-$default_probes}
for m in $methods; do
  case " $all_methods " in *" $m "*) ;; *) echo "unknown method $m; choose from: $all_methods" >&2; exit 2 ;; esac
done
for p in $probes; do
  case " $all_probes " in *" $p "*) ;; *) echo "unknown probe task $p; choose from: $all_probes" >&2; exit 2 ;; esac
done
if ! [[ "$jobs" =~ ^[1-9][0-9]*$ ]]; then echo "--jobs must be a positive integer, got $jobs" >&2; exit 2; fi
if ! [[ "$stage" =~ ^[0-9]+$ && "$stop_stage" =~ ^[0-9]+$ ]]; then
  echo "--stage and --stop-stage take stage numbers (0-8), got $stage and $stop_stage" >&2; exit 2
fi
has() { case " $1 " in *" $2 "*) return 0 ;; *) return 1 ;; esac; }

out=${out:-exp/objectives-$setting}
corpus=$out/corpus
kwcorpus=$out/kwcorpus
data=$out/data
kw=$out/kw
lm=$data/lm/4gram.arpa
mkdir -p "$out/.done" "$out/logs"
cpus=$(nproc 2>/dev/null || echo 1)
job_threads=$(( cpus / jobs )); [ "$job_threads" -ge 1 ] || job_threads=1  # threads of each job after stage 3

selected() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
need() {  # need PATH STAGE: fail when PATH, which stage STAGE writes, is missing
  if [ ! -e "$1" ]; then echo "error: $1 not found: run stage $2 first" >&2; return 1; fi
}
model_of() { echo "$out/$1/pretrain/checkpoints/best"; }
run() { { printf '+'; printf ' %q' "$@"; echo; } >&2; "$@"; }  # run COMMAND...: print it (to the log), run it

# --- what each piece runs (one function per stage; its argument is the method or corpus)

synth_one() {  # stage 0
  case "$1" in
    corpus)
      run $speechcl synth "$corpus" --minutes "$minutes" --speakers "$speakers" --heldout-speakers "$heldout" \
        --dev-minutes "$devtest" --test-minutes "$devtest" --conditions --condition-minutes "$condition_minutes" \
        --lm-sentences "$lm_sentences" --seed 0 ;;
    keywords)
      # shellcheck disable=SC2086
      run $speechcl synth "$kwcorpus" --keywords $kw_args --seed 0 ;;
  esac
}

prepare_one() {  # stage 1
  case "$1" in
    corpus)
      need "$corpus/synth.json" 0
      run $speechcl prepare librispeech "$corpus" "$data" --subset "train-clean-100:$labeled" --seed 0 ;;
    keywords)
      need "$kwcorpus/keywords.json" 0
      run $speechcl prepare keywords "$kwcorpus" "$kw" ;;
  esac
}

cluster_one() {  # stage 2: HuBERT's first-iteration labels
  need "$data/dev-clean.tsv" 1
  # shellcheck disable=SC2086
  run $speechcl cluster "$data" --splits train-clean-100 dev-clean --features mfcc --ext km --no-progress $cluster_args
}

pretrain_one() {  # stage 3, on one thread
  local m=$1 budget=$pt_budget objective=$1
  if [ "$m" = random ]; then budget="trainer.max_update=0"; objective=wav2vec2; fi
  need "$data/train-clean-100.tsv" 1
  if [ "$m" = hubert ]; then need "$data/km.json" 2; fi
  # shellcheck disable=SC2086
  run env OMP_NUM_THREADS=1 $speechcl pretrain --config-name pretrain_cpu objective="$objective" data.manifest_dir="$data" \
    data.train_subset=train-clean-100 data.valid_subset=dev-clean exp_dir="$out/$m/pretrain" trainer.threads=1 \
    ${method_overrides[$m]} $budget $pt_extra
}

probe_one() {  # stage 4
  local m=$1 task model splits
  model=$(model_of "$m")
  need "$model" 3
  for task in $probes; do
    case "$task" in
      phone|ctc) splits=(--manifest-dir "$data" --train train-clean-100 --test test-clean) ;;
      speaker) splits=(--manifest-dir "$data" --train train-clean-100 --test train-clean-100) ;;  # holds out 20%
      keyword) need "$kw/train.tsv" 1; splits=(--manifest-dir "$kw" --train train --test test) ;;
    esac
    # shellcheck disable=SC2086
    run env OMP_NUM_THREADS=$job_threads $speechcl probe "$task" --model "$model" "${splits[@]}" \
      --output "$out/$m/probes/$task" --threads "$job_threads" --no-progress $probe_args
  done
}

invariance_one() {  # stage 5
  local m=$1 model
  model=$(model_of "$m")
  need "$model" 3
  # shellcheck disable=SC2086
  run env OMP_NUM_THREADS=$job_threads $speechcl analyze invariance --model "$model" --input "$data/test-clean.tsv" \
    --output "$out/$m/invariance" --threads "$job_threads" --no-progress $inv_args
}

finetune_one() {  # stage 6; random starts from scratch, its feature encoder trained from the first update (as
  # recipes/synthetic's baseline: freezing random weights would only handicap it)
  local m=$1 init
  need "$data/train-clean-100-$labeled.tsv" 1
  if [ "$m" = random ]; then
    init="model.init= model.preset=$preset model.freeze_finetune_updates=0 model.feature_grad_mult=1.0"
  else
    need "$(model_of "$m")" 3
    init="model.init=$(model_of "$m") optim.lr=$ft_lr_pretrained"
  fi
  # shellcheck disable=SC2086
  run env OMP_NUM_THREADS=$job_threads $speechcl finetune --config-name finetune_cpu data.manifest_dir="$data" \
    data.train_subset="train-clean-100-$labeled" data.valid_subset=dev-clean $init exp_dir="$out/$m/finetune" \
    trainer.max_update="$ft_updates" trainer.threads="$job_threads" $ft_extra
}

lm_one() {  # stage 7: the word LM, once
  need "$corpus/lm-text.txt" 0
  need "$data/dict.ltr.txt" 1
  run $speechcl lm build --text "$corpus/lm-text.txt" --out "$lm" --order 4 --dict "$data/dict.ltr.txt"
}

decode_one() {  # stage 7
  local m=$1 model=$out/$1/finetune/checkpoints/best
  need "$model" 6
  need "$lm" 7
  run env OMP_NUM_THREADS=$job_threads $speechcl evaluate --model "$model" --quiet \
    --manifest "$data/dev-clean.tsv" "$data/test-clean.tsv" --output "$out/$m/finetune/decode"
  # shellcheck disable=SC2086
  run env OMP_NUM_THREADS=$job_threads $speechcl evaluate --model "$model" --quiet \
    --manifest "$data/dev-clean.tsv" "$data/test-clean.tsv" --output "$out/$m/finetune/decode_lm" \
    --beam "$beam" --lm "$lm" --lm-weight $lm_weights --word-score $word_scores --tune-on dev-clean
}

# --- the pieces of stages 0-7 and what each waits for. A piece is named by its marker, STAGE-NAME[-ITEM]; it
# starts once the pieces it needs are done (or outside --stage/--stop-stage), up to --jobs at a time. The shared
# pieces come first, then each method's in the order of --methods: a free job takes the first method's next
# piece before the second method's pretraining, so an interrupted run has whole methods finished (one method's
# probes still run while another pretrains).
ids=()
declare -A fn_of=() item_of=() stage_of=() deps_of=() state=()
piece() {  # piece ID STAGE FUNCTION ITEM DEPENDENCY...
  ids+=("$1"); stage_of[$1]=$2; fn_of[$1]=$3; item_of[$1]=$4; shift 4; deps_of[${ids[-1]}]="$*"
}
corpora="corpus"; has "$probes" keyword && corpora="corpus keywords"
for c in $corpora; do piece "0-synth-$c" 0 synth_one "$c"; done
for c in $corpora; do piece "1-prepare-$c" 1 prepare_one "$c" "0-synth-$c"; done
has "$methods" hubert && piece 2-cluster 2 cluster_one "" 1-prepare-corpus
piece 7-lm 7 lm_one "" 0-synth-corpus 1-prepare-corpus
for m in $methods; do
  piece "3-pretrain-$m" 3 pretrain_one "$m" 1-prepare-corpus "$([ "$m" = hubert ] && echo 2-cluster)"
  piece "4-probes-$m" 4 probe_one "$m" "3-pretrain-$m" "$(has "$probes" keyword && echo 1-prepare-keywords)"
  piece "5-invariance-$m" 5 invariance_one "$m" "3-pretrain-$m"
  piece "6-finetune-$m" 6 finetune_one "$m" "3-pretrain-$m"
  piece "7-decode-$m" 7 decode_one "$m" "6-finetune-$m" 7-lm
done

running=()  # process ids of the running pieces
descendants() { local child; for child in $(pgrep -P "$1" 2>/dev/null); do descendants "$child"; echo "$child"; done; }
stop_pieces() {  # Ctrl-C / SIGTERM: every running piece's commands are asked to stop (training saves, exits 75)
  local pid procs=() waited=0
  for pid in "${running[@]}"; do
    # shellcheck disable=SC2207
    procs+=($(descendants "$pid") "$pid")
  done
  [ ${#procs[@]} -gt 0 ] || return 0
  kill -TERM "${procs[@]}" 2>/dev/null || true
  while alive "${procs[@]}" && [ "$waited" -lt 600 ]; do sleep 0.2; waited=$(( waited + 1 )); done  # saved, gone
}
alive() { local pid; for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
trap 'echo "stopped: the running pieces were asked to save; rerun the same command to resume" >&2; stop_pieces; exit 130' INT TERM

run_pieces() {  # run every selected piece not done yet; fail at the end, naming each failed piece and its log
  local id dep pid rc ready left
  declare -A pid_of=()
  for id in "${ids[@]}"; do
    if ! selected "${stage_of[$id]}"; then state[$id]=skipped
    elif [ -e "$out/.done/$id" ]; then state[$id]=done; echo "stage ${stage_of[$id]} ($id): done already"
    else state[$id]=pending; fi
  done
  while :; do
    for id in "${!pid_of[@]}"; do  # collect the pieces that finished
      pid=${pid_of[$id]}
      if kill -0 "$pid" 2>/dev/null; then continue; fi
      rc=0; wait "$pid" || rc=$?
      unset "pid_of[$id]"
      if [ "$rc" -eq 0 ]; then state[$id]=done; else state[$id]=failed; echo "stage ${stage_of[$id]} ($id): FAILED" >&2; fi
    done
    left=0
    for id in "${ids[@]}"; do  # start what can start, in the order of ids
      [ "${state[$id]}" = pending ] || continue
      ready=true
      for dep in ${deps_of[$id]}; do
        case "${state[$dep]:-skipped}" in
          done|skipped) ;;
          failed|blocked) state[$id]=blocked; ready=false; break ;;
          *) ready=false ;;
        esac
      done
      [ "${state[$id]}" = pending ] || continue
      left=$(( left + 1 ))
      if $ready && [ "${#pid_of[@]}" -lt "$jobs" ]; then
        echo "=== stage ${stage_of[$id]}: $id ($(date +%H:%M:%S); log: $out/logs/$id.log)"
        (
          start=$SECONDS
          "${fn_of[$id]}" "${item_of[$id]}" > "$out/logs/$id.log" 2>&1
          touch "$out/.done/$id"
          echo "stage ${stage_of[$id]} ($id): done in $(( SECONDS - start )) s"
        ) &
        pid_of[$id]=$!
        state[$id]=running
      fi
    done
    running=("${pid_of[@]}")
    [ "$left" -gt 0 ] || [ "${#pid_of[@]}" -gt 0 ] || break
    sleep 0.2
  done
  running=()
  local failed=() blocked=()
  for id in "${ids[@]}"; do
    case "${state[$id]}" in failed) failed+=("$id") ;; blocked) blocked+=("$id") ;; esac
  done
  [ ${#failed[@]} -eq 0 ] && return 0
  for id in "${failed[@]}"; do
    echo "--- $id FAILED; its log, $out/logs/$id.log, ends:" >&2
    tail -n 15 "$out/logs/$id.log" >&2 || true
  done
  echo "failed: ${failed[*]}${blocked[*]:+; not started (they need a failed piece): ${blocked[*]}}" >&2
  echo "the other pieces are done; rerun the same command to retry" >&2
  exit 1
}
run_pieces

# --- stage 8: the comparison
if selected 8; then
  if [ -e "$out/.done/8-results" ]; then echo "stage 8 (8-results): done already"
  else
    echo "=== stage 8: 8-results ($(date +%H:%M:%S))"
    # shellcheck disable=SC2086
    $speechcl compare "$out" --methods $methods --output "$out/results.md"
    touch "$out/.done/8-results"
  fi
fi
