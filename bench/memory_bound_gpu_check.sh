#!/usr/bin/env bash
# On a GPU machine, one command for the bandwidth-bound kernels (swiglu, rmsnorm, add, rope,
# cross_entropy, the MoE permutes): configure and build with CUDA, print the vector kernels'
# registers and spills (ptxas), run the op tests against the CPU (CudaOps, CudaVec) and the
# whole-model tests (CudaModel, TrainingTwiceIsBitwiseEqual among them), then time every op on
# the benchmark shapes (memory_bound_bench). Logs go to $OUT (or the first argument, default
# memory-bound-logs); the bench table comes last.
#   Usage: bash bench/memory_bound_gpu_check.sh [LOGDIR]     (SY_KERN_BUILD_DIR, default build-kern;
#          SY_KERN_TESTS, the ctest -R filter, default 'CudaOps|CudaVec|CudaModel'; SY_KERN_TESTS=none
#          skips the tests, SY_KERN_BENCH=0 the bench)
set -uo pipefail
out=${1:-${OUT:-memory-bound-logs}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_KERN_BUILD_DIR:-build-kern}
jobs=$(nproc 2>/dev/null || echo 4)
status=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
{ nvidia-smi; nvcc --version; } > "$out/machine.log" 2>&1
if ! { cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
       cmake --build "$build" -j "$jobs" --target test_cuda_ops test_cuda_model \
         memory_bound_bench; } > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "build failed: see $out/build.log"
  exit 1
fi

# Registers and spills of the vector kernels (sm_90), as built.
nvcc=$(grep -m1 '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)
for f in swiglu rmsnorm cross_entropy permute elementwise attention; do
  "${nvcc:-nvcc}" -std=c++20 -O3 -arch=sm_90 -I. -Xptxas -v -c "model/cuda/$f.cu" \
    -o "$build/${f}_ptxas.o" 2>&1
done > "$out/ptxas.log"
demangle=cat
command -v c++filt > /dev/null && demangle=c++filt
ptxas=$($demangle < "$out/ptxas.log" | awk '
/Compiling entry/ { name = ""; if (match($0, /[a-z0-9_]*_(vec|streaming)(<[^>]*>)?/)) name = substr($0, RSTART, RLENGTH) }
name != "" && /spill stores/ { match($0, /[0-9]+ bytes spill stores/); spill = substr($0, RSTART, RLENGTH) }
name != "" && /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/);
  printf "  %-44s %s, %s\n", name, substr($0, RSTART, RLENGTH), spill; name = "" }')

# The op tests (f32 and bf16 against the CPU; the vector paths bitwise against the element-wise
# kernels) and the whole model on the GPU against the CPU, and twice bitwise.
tests=${SY_KERN_TESTS:-CudaOps|CudaVec|CudaModel}
: > "$out/ctest.log"
if [ "$tests" != none ]; then
  ctest --test-dir "$build" -R "$tests" --output-on-failure -V --timeout 900 > "$out/ctest.log" \
    2>&1 || status=1
fi
ctest_line=$(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1)
vec_errors=$(grep -E '\[ rel err  \]' "$out/ctest.log" |
  grep -E 'swiglu|rmsnorm|rope|cross_entropy|permute|unpermute|add' | sed 's/.*\[ rel err  \] //' |
  sort -u | awk '{ key = $0; sub(/ [0-9.e+-]+ \(tol.*/, "", key); e = $(NF - 2) + 0;
    if (!(key in m) || e > m[key]) { m[key] = e; line[key] = $0 } } END { for (k in m) print "  " line[k] }' | sort)

: > "$out/bench.log"
if [ "${SY_KERN_BENCH:-1}" != 0 ]; then
  "$build/memory_bound_bench" > "$out/bench.log" 2>&1 || status=1
fi

echo "== ptxas (registers, spills)"
echo "$ptxas"
echo "== relative L2 errors of the ops touched (worst per test line; tolerances in docs/cuda.md)"
echo "$vec_errors"
echo "== ctest: ${ctest_line:-no summary line, see $out/ctest.log}"
grep -E '^\s*[0-9]+/[0-9]+ Test .*(Failed|Exception|Timeout)' "$out/ctest.log" | head -20
grep -m1 '^memory-bound ops' "$out/bench.log" || tail -5 "$out/bench.log"
grep '^|' "$out/bench.log"
echo "logs: $out (status $status)"
exit "$status"
