#!/usr/bin/env bash
# On a GPU machine (H100/H200), one command for the Hopper grouped GEMM: configure and build
# grouped_gemm_check (build dir build-wgmma), report registers/spills/local memory of the sm_90a
# kernels (version 1 and 2), whether the PTX of version 2 keeps one wgmma group in flight
# (wait_group 1) and whether the SASS holds HGMMA, then run the correctness cases (both versions,
# compared bitwise) and the benchmark (v1 and v2 side by side). Logs go to OUTDIR; the speed table
# is printed last.
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

# Registers, spills and stack of each kernel instantiation (ptxas -v on the sm_90a file alone:
# 24 = 2 versions x 2 tile widths x 3 forms x 2 C types), the PTX wgmma wait pattern, the SASS.
nvcc=$(grep -m1 '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)
nvcc=${nvcc:-nvcc}
"$nvcc" -std=c++20 -I. -gencode=arch=compute_90a,code=sm_90a -Xptxas -v \
  -c model/cuda/grouped_gemm_sm90.cu -o "$out/grouped_gemm_sm90.o" > "$out/ptxas.log" 2>&1
"$nvcc" -std=c++20 -I. -gencode=arch=compute_90a,code=sm_90a -ptx \
  model/cuda/grouped_gemm_sm90.cu -o "$out/grouped_gemm_sm90.ptx" >> "$out/ptxas.log" 2>&1
echo "ptxas: $(grep -c 'Used [0-9]* registers' "$out/ptxas.log") kernels (24 expected)," \
     "$(grep -c '0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads' "$out/ptxas.log") without stack or spills," \
     "serialisation warnings: $(grep -ci 'serializ' "$out/ptxas.log")"
echo "PTX: wgmma.wait_group 1 in $(grep -c 'wgmma.wait_group.sync.aligned 1' "$out/grouped_gemm_sm90.ptx") places (12 expected: one per v2 kernel)"
cuobjdump=$(dirname "$nvcc")/cuobjdump
command -v "$cuobjdump" > /dev/null || cuobjdump=cuobjdump
if command -v "$cuobjdump" > /dev/null; then
  "$cuobjdump" --dump-sass "$out/grouped_gemm_sm90.o" > "$out/sass.txt" 2>&1
  echo "SASS: $(grep -c HGMMA "$out/sass.txt") HGMMA, $(grep -c UTMALDG "$out/sass.txt") UTMALDG," \
       "$(grep -c 'WARPGROUP.DEPBAR.LE gsb0, 0x1' "$out/sass.txt") WARPGROUP.DEPBAR.LE ..., 0x1 (v2 waits)"
fi

"$build/grouped_gemm_check" "$@" 2>&1 | tee "$out/grouped_gemm_check.log"
rc=${PIPESTATUS[0]}
echo "grouped_gemm_check exit status $rc (0 = all passed; 1 = failures; 3 = a hang; log: $out/grouped_gemm_check.log)"
exit "$rc"
