#!/usr/bin/env bash
# The routing policy as one struct of enums (model/routing_policy.h; issue 9) on a GPU machine,
# in one go: configure and build the tree; the GPU suites that read the policy or the enum-valued
# keys (test_cuda_ops: router ops under every RoutingRule; test_cuda_model: the balancing router
# from MoeConfig; test_cuda_grouped: moe.expert_kernel; test_cuda_cudnn: model.attention_kernel
# cudnn; test_cuda_recompute); then a 20-step bf16 run of the tiny config on a synthetic token
# file with every balancing option and both kernel keys set by --set, and its resolved
# config.yaml checked for their names. No number may change: every suite compares bitwise or at
# the tolerances it had. Logs go into OUTDIR; the last lines are a summary table.
#   Usage: bash bench/routing_gpu_check.sh [OUTDIR]   (default: $OUT, else routing-logs)
#   SY_GPU_BUILD_DIR (default build-routing).
set -uo pipefail
out=${1:-${OUT:-routing-logs}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_GPU_BUILD_DIR:-build-routing}
jobs=$(nproc 2>/dev/null || echo 8)
export NCCL_NVLS_ENABLE=0 OPENBLAS_NUM_THREADS=1

summary=()
failed=0
# run NAME COMMAND...: output in OUTDIR/NAME.log; notes the exit status and the seconds taken.
run() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo "== $name: $*" | tee "$out/$name.log"
  "$@" >> "$out/$name.log" 2>&1
  rc=$?
  summary+=("$(printf '%-22s rc %-4s %5ss  %s' "$name" "$rc" "$(($(date +%s) - start))" \
    "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/$name.log" | tr '\n' ' ')")")
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}

nvidia-smi > "$out/machine.log" 2>&1
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
run configure cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
  run build cmake --build "$build" -j "$jobs"
if [ "$failed" -eq 0 ]; then
  for suite in test_cuda_ops test_cuda_model test_cuda_grouped test_cuda_cudnn test_cuda_recompute; do
    run "$suite" "$build/tests/$suite"
  done
  run tokens "$build/sy_make_token_file" "$out/tokens.h5" 2000000 100000
  run train_balancing "$build/switchyard" train configs/tiny.yaml --set data.path="$out/tokens.h5" \
    --set run.backend=cuda \
    --set run.precision=bf16 --set train.steps=20 --set run.dir="$out/run_balancing" \
    --set moe.router_score=sigmoid --set moe.drop_policy=probability --set moe.overflow=reroute \
    --set moe.capacity_factor=1.0 --set moe.bias_update_rate=0.01 \
    --set model.attention_kernel=cudnn --set moe.expert_kernel=grouped
  grep -E 'router_score: "sigmoid"|overflow: "reroute"|expert_kernel: "grouped"' \
    "$out/run_balancing/config.yaml" > "$out/config_check.log" 2>&1
  [ "$(wc -l < "$out/config_check.log")" -eq 3 ] || { failed=1; summary+=("config.yaml        lacks a key"); }
fi
echo
echo "routing (issue 9) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
printf '%s\n' "${summary[@]}"
[ "$failed" -eq 0 ] && echo "ALL OK" || echo "FAILED (logs in $out)"
exit "$failed"
