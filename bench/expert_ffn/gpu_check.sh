#!/usr/bin/env bash
# On a GPU machine, one command for the grouped expert FFN: build (build dir build-grouped, or
# SY_GROUPED_BUILD_DIR), run its tests (test_cuda_grouped: every grouped kernel against the CPU
# and whole bf16 models against cublas; test_cuda_model and test_cuda_ops, which now run the
# grouped experts under moe.expert_kernel auto), then the benchmark against PyTorch. Logs go to
# OUTDIR; a short summary and the benchmark table are printed last.
#   Usage: bash bench/expert_ffn/gpu_check.sh OUTDIR [case ...]     (cases: coarse fine skewed)
set -uo pipefail
out=${1:?usage: bash bench/expert_ffn/gpu_check.sh OUTDIR [case ...]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
build=${SY_GROUPED_BUILD_DIR:-build-grouped}
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)

{
  nvidia-smi --query-gpu=name,compute_cap,clocks.max.sm,memory.total --format=csv
  cmake -S . -B "$build" "${generator[@]}" -DSY_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$build" -j"$(nproc)" --target test_cuda_grouped test_cuda_model test_cuda_ops \
      expert_ffn_bench
} > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "BUILD FAILED (log: $out/build.log)"; exit 2; }

status=0
summary=()
for suite in test_cuda_grouped test_cuda_model test_cuda_ops; do
  OPENBLAS_NUM_THREADS=1 timeout 900 "$build/tests/$suite" > "$out/$suite.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || status=1
  summary+=("$suite: rc $rc; $(grep -E '^\[  (PASSED  |FAILED  |SKIPPED )\] [0-9]+ test' "$out/$suite.log" | tr '\n' ' ')")
done

bash bench/expert_ffn/run.sh "$build" "$out" "$@" > "$out/run.log" 2>&1 || status=1

echo "---- tests (logs: $out/<suite>.log)"
printf '%s\n' "${summary[@]}"
grep -hE '^\[  FAILED  \] [A-Za-z]' "$out"/test_cuda_*.log | sort -u | head -20
grep -hE '^\[ (kernel|rel err|model) ' "$out/test_cuda_grouped.log"
grep -hE '^\[ rel err  \] .*(gradients|loss)' "$out/test_cuda_model.log"
echo "---- benchmark (logs: $out/expert_ffn_*.log)"
grep -E '^== ' "$out/expert_ffn_bench.log"
cat "$out/run.log"
exit "$status"
