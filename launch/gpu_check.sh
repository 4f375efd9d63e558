#!/usr/bin/env bash
# On a GPU machine, one command: configure and build with CUDA, run the gpu tests (ctest -L gpu),
# a short bf16 training run of configs/example.yaml on the GPU, and the step benchmarks (tokens/s
# and peak device memory: the example config in bf16 and fp32, and a ~100M-parameter MoE in bf16).
# Every log goes into OUTDIR; OUTDIR/summary.txt lists each step's exit status and time.
#   Usage: bash launch/gpu_check.sh OUTDIR        (SY_GPU_CHECK_BENCH=0 skips the benchmarks)
# Data: corpora/brown.h5 when present (launch/setup.sh prepares it); otherwise a token file is
# prepared from the repository's own text files, so that the script needs nothing outside it.
set -uo pipefail
out=${1:?usage: bash launch/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${SY_GPU_BUILD_DIR:-build-gpu}
jobs=$(nproc 2>/dev/null || echo 4)
summary="$out/summary.txt"
: > "$summary"
status=0

# step NAME COMMAND...: runs COMMAND with its output in OUTDIR/NAME.log, notes rc and time.
step() {
  local name=$1 start rc
  shift
  echo "== $name: $*" | tee -a "$summary"
  start=$(date +%s)
  "$@" >> "$out/$name.log" 2>&1
  rc=$?
  echo "   rc $rc, $(($(date +%s) - start)) s" | tee -a "$summary"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

# NCCL: never NVLink multicast on shared machines. MPI: ctest and the CLI may run as root.
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

{
  nvidia-smi
  nvcc --version
  cmake --version | head -1
  ninja --version
} > "$out/machine.log" 2>&1

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
step build cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
  step build cmake --build "$build" -j "$jobs" || {
  echo "build failed: see $out/build.log" | tee -a "$summary"
  exit 1
}

# -V keeps each test's printed errors and tolerances in the log.
if ! step ctest_gpu ctest --test-dir "$build" -L gpu -V -j 4 --timeout 600; then
  # Keep the evidence: ctest's view of the tests, and the gpu suites run directly.
  {
    echo "---- ctest -N -L gpu"
    ctest --test-dir "$build" -N -L gpu
    for f in "$build"/tests/test_cuda_ops*_tests.cmake; do
      echo "---- head $f"
      head -n 12 "$f"
    done
  } >> "$out/ctest_gpu.log" 2>&1
  step ctest_gpu "$build/tests/test_cuda_ops"
  step ctest_gpu "$build/tests/test_cuda_model"
fi

data=corpora/brown.h5
evals=()
if [ ! -f "$data" ]; then
  mkdir -p "$build/repo_text"
  find . \( -path ./.git -o -path './build*' -o -path ./.deps -o -path ./runs -o -path ./corpora \) \
    -prune -o -type f \( -name '*.md' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' \
    -o -name '*.cuh' -o -name '*.yaml' -o -name '*.txt' -o -name '*.sh' \) -print | sort |
    xargs cat > "$build/repo_text/corpus.txt"
  step train_bf16 "./$build/switchyard" prepare-data --format text --input "$build/repo_text" \
    --output "$build/repo_text.h5"
  data="$build/repo_text.h5"
  evals=(--set eval.tokens=16384)
fi

run_dir="$build/runs/gpu-check"
rm -rf "$run_dir"
step train_bf16 "./$build/switchyard" train configs/example.yaml --set run.backend=cuda \
  --set run.precision=bf16 --set "data.path=$data" --set train.steps=300 --set eval.every=100 \
  --set "run.dir=$run_dir" "${evals[@]}"
{
  echo "---- $run_dir/metrics.jsonl (last lines)"
  tail -n 5 "$run_dir/metrics.jsonl"
} >> "$out/train_bf16.log" 2>&1

if [ "${SY_GPU_CHECK_BENCH:-1}" = 0 ]; then  # tests and the training run only
  echo "== done, status $status (benchmarks skipped; logs in $out)" | tee -a "$summary"
  exit "$status"
fi
bench=("./$build/sy_bench_train")
example=(configs/example.yaml --set run.backend=cuda --set "data.path=$data")
# About 100M parameters: 6 MoE layers of 8 experts (top-2), d_model 768, seq_len 512.
moe100m=("${example[@]}" --set name=moe-100m --set model.d_model=768 --set model.n_layers=6
  --set model.n_heads=12 --set model.seq_len=512 --set moe.num_experts=8
  --set moe.expert_hidden=768 --set train.micro_batch_size=8)
for precision in bf16 fp32; do
  step bench "${bench[@]}" "${example[@]}" --set run.precision=$precision --steps 110 --warmup 10
done
for precision in bf16 fp32; do
  step bench "${bench[@]}" "${moe100m[@]}" --set run.precision=$precision --steps 60 --warmup 10
done
# Diagnosis: the same with every kernel module loaded up front (CUDA loads lazily by default).
step bench env CUDA_MODULE_LOADING=EAGER "${bench[@]}" "${example[@]}" --set run.precision=bf16 \
  --steps 110 --warmup 10
# Where a step's time goes, per op (each op synchronised: totals, not throughput).
for precision in bf16 fp32; do
  step bench env SY_CUDA_PROFILE=1 "${bench[@]}" "${example[@]}" --set run.precision=$precision \
    --steps 60 --warmup 10
done

echo "== done, status $status (logs in $out)" | tee -a "$summary"
grep -h '^{' "$out/bench.log" | tee -a "$summary"
exit "$status"
