#!/usr/bin/env bash
# The fused optimizer pass on a GPU machine, in one go: configure and build, the tests
# (tests/test_cuda_optim: fused == per-tensor bitwise, norms, determinism; test_optim on the CPU;
# the per-tensor AdamW op against the CPU; test_cuda_model, whose 50-step runs now go through the
# fused pass), the timing of the fused pass against the per-tensor path (sy_bench_optimizer,
# 57 x 32M fp32 parameters with bf16 copies) and a short bf16 training benchmark of the example
# config. Every log goes into OUTDIR; the last lines printed are a summary table.
#   Usage: bash bench/gpu_optim_check.sh [OUTDIR]      (default: $OUT, else optim-logs)
#   SY_GPU_BUILD_DIR (default build-optim), SY_OPTIM_TENSORS / SY_OPTIM_NUMEL (the bench size).
set -uo pipefail
out=${1:-${OUT:-optim-logs}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_GPU_BUILD_DIR:-build-optim}
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
  summary+=("$(printf '%-26s rc %-4s %5ss' "$name" "$rc" "$(($(date +%s) - start))")")
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}

nvidia-smi > "$out/machine.log" 2>&1
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
run configure cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
  run build cmake --build "$build" -j "$jobs" --target test_cuda_optim test_optim test_cuda_ops \
    test_cuda_model sy_bench_optimizer sy_bench_train
if [ "$failed" -eq 0 ]; then
  run test_cuda_optim "$build/tests/test_cuda_optim"
  run test_optim "$build/tests/test_optim"
  run test_cuda_ops_adamw "$build/tests/test_cuda_ops" --gtest_filter='*AdamW*:*SumSquares*'
  run test_cuda_model "$build/tests/test_cuda_model"
  run bench_optimizer "$build/sy_bench_optimizer" --tensors "${SY_OPTIM_TENSORS:-57}" \
    --numel "${SY_OPTIM_NUMEL:-33554432}"
  run bench_train_example_bf16 "$build/sy_bench_train" configs/example.yaml \
    --set run.backend=cuda --set run.precision=bf16 --steps 60
fi

echo
echo "---- gtest results"
for f in "$out"/test_*.log; do
  [ -f "$f" ] && printf '%-26s %s\n' "$(basename "$f" .log)" \
    "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$f" | tr '\n' ' ')"
done
grep -h "norm squares:" "$out"/test_cuda_optim.log 2>/dev/null
echo "---- bf16 training step (example config)"
tail -n 1 "$out/bench_train_example_bf16.log" 2>/dev/null
echo "---- optimizer pass (sy_bench_optimizer)"
grep -A4 "^optimizer pass" "$out/bench_optimizer.log" 2>/dev/null
echo "---- steps (logs in $out)"
printf '%s\n' "${summary[@]}"
exit "$failed"
