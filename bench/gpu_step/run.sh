#!/usr/bin/env bash
# Our bf16 training step against the same model in PyTorch, on one GPU, in one command:
#   bash bench/gpu_step/run.sh OUTDIR
# For each of configs/bench/{moe,dense,fine}.yaml: sy_bench_train (tokens/s, MFU, peak memory,
# the load cv of the timed steps, the first loss; then a few steps under the event-timed op
# profile), writing the batches it trains on and its initial weights; then
# bench/gpu_step/pytorch_model.py on the same batches from the same weights, eager (grouped_mm
# and loop experts) and compiled. Last, bench/gpu_step/report.py prints the MoE per-op profile,
# the initial-loss check and the throughput table (also OUTDIR/summary.md).
# OUTDIR gets at most 6 files: build.log, <config>.log (ours, then torch), results.jsonl,
# summary.md. Exit status: 0 when every stage ran and every loss check passed.
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
out=${1:?usage: bash bench/gpu_step/run.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
build=${SY_BUILD_DIR:-build-gpustep}
configs=${CONFIGS:-moe dense fine}
work=${WORK:-/tmp/sy_gpu_step}
budget=${BUDGET_S:-560}
check=${CHECK:-1}
mkdir -p "$work"
: > "$out/results.jsonl"
: > "$out/summary.md"
# NVLink multicast stays off on shared machines; MPI (the checkpoint writer) may run as root.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
began=$(date +%s)
status=0
skipped=()

# stage LOG NAME COMMAND...: runs COMMAND with its output appended to LOG, within the budget.
stage() {
  local log=$1 name=$2 left rc start note
  shift 2
  left=$((budget - ($(date +%s) - began)))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped (time budget BUDGET_S=$budget spent)" | tee -a "$log"
    skipped+=("$name")
    status=1
    return 1
  fi
  echo "== $name: $*" | tee -a "$log"
  start=$(date +%s)
  timeout --kill-after=10 "$left" "$@" >> "$log" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && note=" (stopped: time budget)" || note=""
  echo "   rc $rc, $(($(date +%s) - start)) s$note" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvcc --version | tail -2
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  git log -1 --format='commit %h %s' 2>/dev/null
  git status --short 2>/dev/null | head -40
} > "$out/build.log" 2>&1
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  stage "$out/build.log" configure cmake -S . -B "$build" "${generator[@]}" -DSY_CUDA=ON \
    -DCMAKE_BUILD_TYPE=Release || { echo "configure failed: $out/build.log"; exit 1; }
fi
stage "$out/build.log" build cmake --build "$build" -j "$(nproc)" --target sy_bench_train ||
  { echo "build failed: $out/build.log"; tail -20 "$out/build.log"; exit 1; }

# The event-timed profile over a whole small run (SY_CUDA_PROFILE=events; table on stderr).
stage "$out/build.log" "profile smoke" env SY_CUDA_PROFILE=events "./$build/sy_bench_train" \
  configs/example.yaml --set run.backend=cuda --set run.precision=bf16 \
  --set data.path=corpora/absent.h5 --steps 4 --warmup 1

data=()
[ -n "${DATA:-}" ] && data=(--set "data.path=$DATA")
# OURS_SET="section.key=value ...": extra overrides for our side (e.g. model.attention_kernel=cudnn).
for kv in ${OURS_SET:-}; do data+=(--set "$kv"); done
for name in $configs; do
  log="$out/$name.log"
  : > "$log"
  tokens="$work/$name.tokens.bin"
  init="$work/$name.init.h5"
  rm -f "$tokens" "$tokens.json" "$init"
  save=()
  [ "$check" = 1 ] && save=(--save-init "$init")
  stage "$log" "ours $name" "./$build/sy_bench_train" "configs/bench/$name.yaml" "${data[@]}" \
    --steps $((${OURS_WARMUP:-5} + ${OURS_STEPS:-20})) --warmup "${OURS_WARMUP:-5}" \
    --profile-steps "${PROFILE_STEPS:-3}" --tokens "$tokens" "${save[@]}"
  grep -h '^{"config"' "$log" | tail -1 >> "$out/results.jsonl"
  if [ -f "$tokens.json" ]; then
    weights=()
    [ -f "$init" ] && weights=(--init "$init")
    stage "$log" "torch $name" python3 bench/gpu_step/pytorch_model.py "$tokens" "${weights[@]}" \
      --modes "${TORCH_MODES:-eager,compiled}" --experts "${TORCH_EXPERTS:-both}" \
      --warmup "${TORCH_WARMUP:-${OURS_WARMUP:-5}}" --steps "${TORCH_STEPS:-${OURS_STEPS:-20}}" \
      --json "$out/results.jsonl"
  else
    echo "== torch $name: skipped (ours wrote no batches)" | tee -a "$log"
    status=1
  fi
  rm -f "$init"  # up to 13.5 GB each
done

if [ "${#skipped[@]}" -gt 0 ]; then
  echo "skipped for time: ${skipped[*]}; run the rest with CONFIGS=\"...\" (the build is reused)"
fi
echo "total $(($(date +%s) - began)) s, stage status $status, logs in $out"
echo
python3 bench/gpu_step/report.py "$out" || status=1
exit "$status"
