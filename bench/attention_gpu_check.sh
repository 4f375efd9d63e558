#!/usr/bin/env bash
# On a GPU machine, one command for the flash attention kernels: configure and build with CUDA,
# print the flash kernels' registers and spills (ptxas), run the attention tests (ctest -R), time
# flash against the reference path (attention_bench) and, when torch is installed, torch's SDPA.
# Logs go to $OUT (or the first argument, default attention-logs); a short table comes last.
#   Usage: bash bench/attention_gpu_check.sh [LOGDIR]      (SY_FLASH_BUILD_DIR, default build-flash)
set -uo pipefail
out=${1:-${OUT:-attention-logs}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_FLASH_BUILD_DIR:-build-flash}
jobs=$(nproc 2>/dev/null || echo 4)
status=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
{ nvidia-smi; nvcc --version; } > "$out/machine.log" 2>&1
if ! { cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
       cmake --build "$build" -j "$jobs" --target test_cuda_ops test_flash_attention \
         test_cuda_model attention_bench; } > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "build failed: see $out/build.log"
  exit 1
fi

# Registers and spills of the tensor-core kernels (sm_90), as built.
nvcc=$(grep -m1 '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)
"${nvcc:-nvcc}" -std=c++20 -O3 -arch=sm_90 -I. -Xptxas -v -c model/cuda/flash_attention.cu \
  -o "$build/flash_attention_ptxas.o" > "$out/ptxas.log" 2>&1
ptxas=$(awk '
/Compiling entry/ { name = ""; if (match($0, /flash_(forward|backward_dq|backward_dkdv)_kernelILi[0-9]+/)) {
    s = substr($0, RSTART + 6, RLENGTH - 6); sub(/_kernelILi/, " Dh=", s); name = s } }
name != "" && /spill stores/ { match($0, /[0-9]+ bytes spill stores/); spill = substr($0, RSTART, RLENGTH) }
name != "" && /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/);
  printf "  %-22s %s, %s\n", name, substr($0, RSTART, RLENGTH), spill; name = "" }' "$out/ptxas.log")

# The attention tests: flash against the CPU reference (bf16, f32; S 1..1024; Dh 16, 64, 128),
# the causal mask, determinism; the CPU flash reference; the whole model on the GPU (flash by
# default there) against the CPU.
ctest --test-dir "$build" -R 'Flash|Attention|CudaModel|cuda_model' --output-on-failure -V \
  --timeout 900 > "$out/ctest.log" 2>&1 || status=1
ctest_line=$(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1)
errors=$(grep -E '\[ rel err  \] flash' "$out/ctest.log" | sed 's/.*\[ rel err  \] //' | sort -u)
worst=$(echo "$errors" | awk 'NF >= 6 { key = sprintf("%-28s %-4s %-5s", $1, $2, $5); e = $6 + 0;
  if (!(key in m) || e > m[key]) { m[key] = e; tol[key] = $8 } }
  END { for (k in m) printf "  %s worst %.3e (tol %s\n", k, m[k], tol[k] }' | sort)

"$build/attention_bench" > "$out/bench.log" 2>&1 || status=1
torch_table=""
if python3 -c 'import torch' > /dev/null 2>&1; then
  python3 bench/attention_torch.py > "$out/torch.log" 2>&1 || status=1
  torch_table=$(grep '^| torch' "$out/torch.log")
fi

echo "== ptxas (registers, spills)"
echo "$ptxas"
echo "== ctest: ${ctest_line:-no summary line, see $out/ctest.log}"
grep -E '^\s*[0-9]+/[0-9]+ Test .*(Failed|Exception|Timeout)' "$out/ctest.log" | head -20
echo "== flash relative L2 errors (worst over S and Dh; tolerances in docs/cuda.md)"
echo "$worst"
echo "== $(grep -m1 '^flash vs reference' "$out/bench.log")"
echo "== $(grep -m1 '^peak device memory' "$out/bench.log")"
grep -m1 '^causal attention' "$out/bench.log"
grep '^|' "$out/bench.log"
[ -n "$torch_table" ] && echo "$torch_table"
echo "logs: $out (status $status)"
exit "$status"
