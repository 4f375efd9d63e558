#!/usr/bin/env bash
# On a GPU machine (H100/H200), one command for the Hopper grouped GEMM: configure and build
# grouped_gemm_check (build dir build-wgmma), report registers/spills of the sm_90a kernels and
# whether the SASS holds HGMMA, then run the correctness cases and the benchmark. Logs go to OUTDIR;
# the speed table is printed last.
#   Usage: bash bench/grouped_gemm_check.sh OUTDIR [--quick]
#   SY_GG_DEBUG=1 builds the kernel with bounded mbarrier waits (a deadlock traps and is reported).
set -uo pipefail
out=${1:?usage: bash bench/grouped_gemm_check.sh OUTDIR [--quick]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_GG_BUILD_DIR:-build-wgmma}
extra=()
[ "${SY_GG_DEBUG:-0}" = 1 ] && extra+=("-DCMAKE_CUDA_FLAGS=-DSY_GG_SM90_DEBUG=1")

{
  nvidia-smi --query-gpu=name,compute_cap,clocks.max.sm,memory.total --format=csv
  cmake -S . -B "$build" -G Ninja -DSY_CUDA=ON -DCMAKE_BUILD_TYPE=Release "${extra[@]}" &&
    cmake --build "$build" -j"$(nproc)" --target grouped_gemm_check
} > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "BUILD FAILED (log: $out/build.log)"; exit 2; }

# Registers and spills of each kernel instantiation (ptxas -v on the sm_90a file alone).
nvcc=$(grep -m1 '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)
"${nvcc:-nvcc}" -std=c++20 -I. -gencode=arch=compute_90a,code=sm_90a -Xptxas -v \
  -c model/cuda/grouped_gemm_sm90.cu -o "$out/grouped_gemm_sm90.o" > "$out/ptxas.log" 2>&1
echo "ptxas: $(grep -c 'Used 168 registers' "$out/ptxas.log") of 12 kernels at 168 registers;" \
     "spill lines with nonzero bytes: $(grep -E 'spill' "$out/ptxas.log" | grep -vc ' 0 bytes spill stores, 0 bytes spill loads')"
if command -v cuobjdump > /dev/null; then
  cuobjdump --dump-sass "$out/grouped_gemm_sm90.o" > "$out/sass.txt" 2>&1
  echo "SASS: $(grep -c HGMMA "$out/sass.txt") HGMMA instructions, $(grep -c UTMALDG "$out/sass.txt") UTMALDG"
fi

"$build/grouped_gemm_check" "$@" 2>&1 | tee "$out/grouped_gemm_check.log"
rc=${PIPESTATUS[0]}
echo "grouped_gemm_check exit status $rc (0 = all passed; 1 = failures; 3 = a hang; log: $out/grouped_gemm_check.log)"
exit "$rc"
