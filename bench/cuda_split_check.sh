#!/usr/bin/env bash
# The CUDA backend's allocator, profiler and device discovery (model/cuda/device_memory.h,
# profiler.h, device.h) on a GPU machine, in one go: configure and build; the GPU tests with the
# default allocator and again with SY_CUDA_ALLOCATOR=async (test_cuda_model checks that steps
# 3-50 take no memory from the driver); test_nccl (the device now comes from host_local_rank);
# every SY_CUDA_PROFILE mode on a short bf16 run of the example config (their losses must equal
# the unprofiled run's: profiling changes no number), nvtx under nsys where it is installed; and
# the two allocators timed on the 1.8B MoE step (configs/bench/moe.yaml: dropless, so its shapes
# change every step). Every log goes into OUTDIR; the last lines printed are a summary table.
#   Usage: bash bench/cuda_split_check.sh [OUTDIR]      (default: $OUT, else cudasplit-logs)
#   SY_GPU_BUILD_DIR (default build-cudasplit), SY_SPLIT_MOE_STEPS (default 20, 5 of them warm-up).
set -uo pipefail
out=${1:-${OUT:-cudasplit-logs}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_GPU_BUILD_DIR:-build-cudasplit}
jobs=$(nproc 2>/dev/null || echo 8)
moe_steps=${SY_SPLIT_MOE_STEPS:-20}
export NCCL_NVLS_ENABLE=0 OPENBLAS_NUM_THREADS=1
unset SY_CUDA_PROFILE SY_CUDA_ALLOCATOR

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
  summary+=("$(printf '%-30s rc %-4s %5ss' "$name" "$rc" "$(($(date +%s) - start))")")
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}

nvidia-smi > "$out/machine.log" 2>&1
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
run configure cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
  run build cmake --build "$build" -j "$jobs" --target test_cuda_ops test_cuda_model \
    test_cuda_optim test_nccl sy_bench_train switchyard
if [ "$failed" -eq 0 ]; then
  run test_cuda_ops "$build/tests/test_cuda_ops"
  run test_cuda_model "$build/tests/test_cuda_model"
  run test_cuda_optim "$build/tests/test_cuda_optim"
  run test_cuda_model_async env SY_CUDA_ALLOCATOR=async "$build/tests/test_cuda_model"
  run test_cuda_optim_async env SY_CUDA_ALLOCATOR=async "$build/tests/test_cuda_optim"
  run test_nccl ctest --test-dir "$build" -R '^test_nccl' --output-on-failure
  run unknown_allocator_refused bash -c "SY_CUDA_ALLOCATOR=bogus '$build/sy_bench_train' \
    configs/example.yaml --set run.backend=cuda --set run.precision=bf16 --steps 2 --warmup 1 \
    2>&1 | tee /dev/stderr | grep -q 'SY_CUDA_ALLOCATOR must be caching or async'"

  example=("$build/sy_bench_train" configs/example.yaml --set run.backend=cuda
           --set run.precision=bf16 --steps 30 --warmup 5)
  run example_plain "${example[@]}"
  run example_profile_sync env SY_CUDA_PROFILE=1 "${example[@]}"
  run example_profile_events env SY_CUDA_PROFILE=events "${example[@]}"
  run example_profile_nvtx env SY_CUDA_PROFILE=nvtx "${example[@]}"
  run example_async env SY_CUDA_ALLOCATOR=async "${example[@]}"
  if command -v nsys > /dev/null; then
    run example_nsys_nvtx env SY_CUDA_PROFILE=nvtx nsys profile --trace=cuda,nvtx \
      --force-overwrite=true -o "$out/example_nvtx" "${example[@]}" &&
      run nsys_nvtx_ranges nsys stats --report nvtx_sum --format csv "$out/example_nvtx.nsys-rep"
  fi

  moe=("$build/sy_bench_train" configs/bench/moe.yaml --set run.backend=cuda
       --set run.precision=bf16 --steps "$moe_steps" --warmup 5)
  run moe_caching "${moe[@]}"
  run moe_async env SY_CUDA_ALLOCATOR=async "${moe[@]}"
fi

# The JSON line of a sy_bench_train log.
field() { grep -h '^{"config"' "$1" 2>/dev/null | python3 -c "
import json, sys
line = sys.stdin.read().strip()
print(json.loads(line)['$2'] if line else '-')"; }

echo
echo "---- gtest results"
for f in "$out"/test_*.log; do
  [ -f "$f" ] && printf '%-30s %s\n' "$(basename "$f" .log)" \
    "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$f" | tr '\n' ' ')"
done
echo "---- profile modes (losses must equal example_plain's)"
plain=$(field "$out/example_plain.log" losses)
for name in example_plain example_profile_sync example_profile_events example_profile_nvtx \
            example_async; do
  same=$([ "$(field "$out/$name.log" losses)" = "$plain" ] && echo same || echo DIFFERENT)
  printf '%-26s losses %-9s step %8s ms  peak %8s MiB\n' "$name" "$same" \
    "$(field "$out/$name.log" step_ms)" "$(field "$out/$name.log" peak_memory_mib)"
done
grep -h "^SY_CUDA_PROFILE" "$out"/example_profile_*.log 2>/dev/null | head -n 4
[ -f "$out/nsys_nvtx_ranges.log" ] && { echo "nvtx ranges (nsys):"; sed -n '2,8p' "$out/nsys_nvtx_ranges.log"; }
echo "---- allocators on the 1.8B MoE step (bf16, dropless, $moe_steps steps, 5 warm-up)"
printf '%-10s %10s %14s %10s  %s\n' allocator step_ms peak_MiB last_loss losses
for name in caching async; do
  f="$out/moe_$name.log"
  same=$([ "$(field "$f" losses)" = "$(field "$out/moe_caching.log" losses)" ] && echo same || echo DIFFERENT)
  printf '%-10s %10s %14s %10s  %s\n' "$name" "$(field "$f" step_ms)" \
    "$(field "$f" peak_memory_mib)" "$(field "$f" last_loss)" "$same"
done
echo "---- steps (logs in $out)"
printf '%s\n' "${summary[@]}"
exit "$failed"
