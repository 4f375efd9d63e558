#!/usr/bin/env bash
# The load-balancing comparison at GPU scale (docs/load-balancing.md): a ~110M-parameter MoE
# (d_model 512, 8 layers, 16 experts of width 512, top-2, seq_len 256, 32 sequences per step) on
# one GPU in bf16, trained the same steps from the same seed with each balancing method, against
# a dense model of the same active parameters, and capacity 1.0 with drop against reroute.
# Usage: bash bench/gpu_load_balancing.sh OUTDIR [BUILD_DIR]   (after launch/gpu_check.sh built it)
# Writes OUTDIR/<run>/{console.log,train.log,metrics.jsonl} and OUTDIR/summary.txt (one line per
# run); console.log is stdout and stderr (train.log is switchyard's own, timestamped copy).
set -uo pipefail
out=${1:?usage: bash bench/gpu_load_balancing.sh OUTDIR [BUILD_DIR]}
build=${2:-build-gpu}
cd "$(dirname "$0")/.."
mkdir -p "$out"
data=corpora/brown.h5
[ -f "$data" ] || { echo "gpu_load_balancing.sh: $data is missing (launch/setup.sh prepares it)" >&2; exit 1; }

model=(--set run.backend=cuda --set run.precision=bf16 --set model.d_model=512
  --set model.n_layers=8 --set model.n_heads=8 --set model.seq_len=256 --set moe.num_experts=16
  --set moe.expert_hidden=512 --set train.micro_batch_size=32 --set train.steps=300
  --set train.lr=1e-3 --set train.min_lr=1e-4 --set train.warmup_steps=30
  --set eval.every=100 --set eval.tokens=163840 --set run.log_every=10 --set "data.path=$data")
runs=(
  "aux-loss|"
  "no-balancing|moe.aux_loss_coef=0"
  "aux-loss-free|moe.aux_loss_coef=0 moe.bias_update_rate=0.01"
  "aux-free-sigmoid|moe.aux_loss_coef=0 moe.bias_update_rate=0.01 moe.router_score=sigmoid"
  "dense|moe.num_experts=0 model.ffn_hidden=1024"
  "cf-1.0|moe.capacity_factor=1.0"
  "cf-1.0-reroute|moe.capacity_factor=1.0 moe.overflow=reroute"
)
: >"$out/summary.txt"
for entry in "${runs[@]}"; do
  name=${entry%%|*}
  args=()
  for override in ${entry#*|}; do args+=(--set "$override"); done
  mkdir -p "$out/$name"
  "./$build/switchyard" train configs/experiments/base.yaml --set "name=gpu-$name" \
    --set "run.dir=$out/$name" --set checkpoint.keep_last=1 "${model[@]}" "${args[@]}" \
    >"$out/$name/console.log" 2>&1
  echo "$name rc=$? ${entry#*|} :: $(grep -E 'total parameters|active parameters|peak device' "$out/$name/console.log" | tr -s ' ' | tr '\n' ';') $(tail -1 "$out/$name/console.log")" |
    tee -a "$out/summary.txt"
  rm -rf "$out/$name/checkpoints"
done
