#!/usr/bin/env bash
# Our bf16 training step against the same model in PyTorch, on one GPU, in one command:
#   bash bench/gpu_step/run.sh OUTDIR
# For each of configs/bench/{moe,dense,fine}.yaml: sy_bench_train (tokens/s, MFU, peak memory,
# the load cv of the timed steps, the first loss; then a few steps under the event-timed op
# profile), writing the batches it trains on and its initial weights; then
# bench/gpu_step/pytorch_model.py on the same batches from the same weights, eager (grouped_mm
# and loop experts) and compiled. Last, bench/gpu_step/report.py prints the MoE per-op profile,
# the initial-loss check and the throughput table (also OUTDIR/summary.md).
# OUTDIR gets at most 7 files: build.log, <config>.log (ours, then torch), results.jsonl,
# summary.md, summary.txt (each stage's exit status and time; launch/gpu_check.sh step keeps that
# in its own). Exit status: 0 when every stage ran and every loss check passed.
# Environment (all optional):
#   CONFIGS="moe dense fine"    which configs, in this order
#   SY_BUILD_DIR=build-gpustep  build folder: configured when new, then built incrementally
#   DATA=FILE.h5                token file for both sides (default: synthetic uniform tokens)
#   OURS_SET="k=v ..."          extra --set overrides for our side
#   OURS_WARMUP=5 OURS_STEPS=20 PROFILE_STEPS=3    our untimed, timed and profiled steps
#   TORCH_WARMUP, TORCH_STEPS   per PyTorch mode; default OURS_*: the same batches, LR and
#                               window, so that the load cv of both sides compare
#   TORCH_EXPERTS=both          both | grouped | loop | auto (pytorch_model.py --experts)
#   TORCH_MODES=eager,compiled
#   CHECK=1                     same initial weights for both (the initial-loss check): writes
#                               7 GB (moe), 2.4 GB (dense), 13.5 GB (fine) to WORK, one at a time
#   WORK=/tmp/sy_gpu_step       scratch for the batches and the weights
#   BUDGET_S=560                no stage starts after this many seconds; a running one is
#                               stopped at it (the table then shows what finished)
set -uo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/../../launch/lib.sh"
out=${1:?usage: bash bench/gpu_step/run.sh OUTDIR}
sy_init "$out" "${BUDGET_S:-560}"
out=$sy_out
build=${SY_BUILD_DIR:-build-gpustep}
configs=${CONFIGS:-moe dense fine}
work=${WORK:-/tmp/sy_gpu_step}
check=${CHECK:-1}
sy_do mkdir -p "$work"
sy_dry || : > "$out/results.jsonl"
sy_dry || : > "$out/summary.md"

sy_machine build
if [ ! -f "$build/CMakeCache.txt" ]; then
  sy_configure "$build" -DSY_CUDA=ON || { echo "configure failed: $out/build.log"; exit 1; }
fi
sy_build "$build" sy_bench_train || exit 1

# The event-timed profile over a whole small run (SY_CUDA_PROFILE=events; table on stderr).
sy_step -l build "profile smoke" env SY_CUDA_PROFILE=events "$build/sy_bench_train" \
  configs/example.yaml --set run.backend=cuda --set run.precision=bf16 \
  --set data.path=corpora/absent.h5 --steps 4 --warmup 1

data=()
[ -n "${DATA:-}" ] && data=(--set "data.path=$DATA")
# OURS_SET="section.key=value ...": extra overrides for our side (e.g. model.attention_kernel=cudnn).
for kv in ${OURS_SET:-}; do data+=(--set "$kv"); done
for name in $configs; do
  tokens="$work/$name.tokens.bin"
  init="$work/$name.init.h5"
  sy_do rm -f "$tokens" "$tokens.json" "$init"
  save=()
  [ "$check" = 1 ] && save=(--save-init "$init")
  sy_step -l "$name" "ours $name" "$build/sy_bench_train" "configs/bench/$name.yaml" "${data[@]}" \
    --steps $((${OURS_WARMUP:-5} + ${OURS_STEPS:-20})) --warmup "${OURS_WARMUP:-5}" \
    --profile-steps "${PROFILE_STEPS:-3}" --tokens "$tokens" "${save[@]}"
  sy_dry || grep -h '^{"config"' "$out/$name.log" | tail -1 >> "$out/results.jsonl"
  if [ -f "$tokens.json" ] || sy_dry; then
    weights=()
    if [ -f "$init" ] || { sy_dry && [ "$check" = 1 ]; }; then weights=(--init "$init"); fi
    sy_step -l "$name" "torch $name" python3 bench/gpu_step/pytorch_model.py "$tokens" "${weights[@]}" \
      --modes "${TORCH_MODES:-eager,compiled}" --experts "${TORCH_EXPERTS:-both}" \
      --warmup "${TORCH_WARMUP:-${OURS_WARMUP:-5}}" --steps "${TORCH_STEPS:-${OURS_STEPS:-20}}" \
      --json "$out/results.jsonl"
  else
    sy_fail "torch $name: skipped (ours wrote no batches)"
  fi
  sy_do rm -f "$init"  # up to 13.5 GB each
done

if [ "${#sy_skipped[@]}" -gt 0 ]; then
  echo "skipped for time: ${sy_skipped[*]}; run the rest with CONFIGS=\"...\" (the build is reused)"
fi
echo "total $(($(date +%s) - sy_began)) s, stage status $sy_failed, logs in $out"
echo
sy_dry || python3 bench/gpu_step/report.py "$out" || sy_failed=1
exit "$sy_failed"
