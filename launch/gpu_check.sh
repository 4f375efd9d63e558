#!/usr/bin/env bash
# On a GPU machine, one command for every GPU check: configure and build with CUDA once, then run
# the named parts, each with its logs in OUTDIR/PART/ and its short report printed as it ends;
# a table of the parts comes last, and OUTDIR/summary.txt lists every step's exit status and time.
#   Usage: bash launch/gpu_check.sh OUTDIR [PART...]      (default parts: tests example)
#          bash launch/gpu_check.sh --list                (the parts, one line each)
#   SY_GPU_BUILD_DIR    build folder (default build-gpu), configured and built once
#   SY_GPU_CHECK_DRY=1  print every command instead of running it (no GPU needed)
#   SY_GPU_CHECK_BUDGET_S  no step starts after this many seconds (a running one is stopped)
# Each part's own settings are in its line of the list below. A GPU suite that several parts
# read (test_cuda_model, ...) runs once per call; the later parts copy its log.
# shellcheck disable=SC2317  # the part_* functions are called by name: "part_$part"
set -uo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

parts_help="\
tests      ctest -L gpu (every GPU suite, verbose: tolerances and errors in the log)
example    a 300-step bf16 run of configs/example.yaml, then sy_bench_train on it and a ~100M MoE
           (bf16, fp32, eager module loading, SY_CUDA_PROFILE=1); SY_GPU_CHECK_BENCH=0: the run only
step       bench/gpu_step/run.sh: our step against PyTorch on configs/bench/{moe,dense,fine}.yaml
           (its settings: CONFIGS, CHECK, TORCH_MODES, TORCH_EXPERTS, BUDGET_S, ...)
trace      the step's kernel timeline (bench/kernel_trace, CUPTI): GPU busy and idle time a step,
           the idle gaps by the ops around them, GPU time by kernel (SY_TRACE_CONFIGS, default moe)
ab         bench/ab/run.sh: the working tree against a baseline (AB_REF, default HEAD) built beside
           it, sy_bench_train alternating, losses compared (AB_CONFIGS, AB_ROUNDS, AB_MEMBOUND, ...)
ffn        the expert FFN: test_cuda_grouped, test_cuda_model, test_cuda_ops, then
           bench/expert_ffn/run.sh (cuBLAS loop, grouped kernels, PyTorch, ceiling); SY_FFN_CASES
grouped    the Hopper grouped GEMM: ptxas/PTX/SASS counts, ~1300 checks, TFLOP/s; SY_GG_ARGS
           (--quick, --no-bench), SY_GG_DEBUG=1 (bounded mbarrier waits, own build folder)
attention  flash attention: ptxas, ctest -R Flash|Attention|CudaModel, attention_bench, torch SDPA
cudnn      every cuDNN attention engine config and kernel knob value, timed against the plans' own
           (bench/cudnn_configs/sweep.py over attention_bench; SY_CUDNN_SWEEP_S, default 480)
documents  document masking: test_cuda_document_mask, then bench/ab/run.sh on configs/bench/moe.yaml
           with data.document_mask=true, the flash kernels (SY_CUDNN_DOCUMENTS=0) against cuDNN's
           ragged layout (the default); SY_DOCS_ROUNDS (2), SY_DOCS_CONFIGS (moe)
optim      the fused optimizer: its tests, sy_bench_optimizer (SY_OPTIM_TENSORS, SY_OPTIM_NUMEL),
           a 60-step bf16 bench of the example config
adamw      the AdamW pass's floor and block shapes: copy_bench (kernel copies against cudaMemcpy), then
           sy_bench_optimizer --layout training per SY_ADAMW_SHAPE[:PARTS] (SY_ADAMW_SHAPES, _ROUNDS),
           ranked by their mean against wide, and the test that every shape gives the same bits
memory     train.recompute: test_recompute, test_cuda_recompute, test_cuda_model, then
           configs/bench/{moe,dense}.yaml per mode (SY_MEMORY_STEPS, _WARMUP, _CONFIGS, _MODES)
membound   the bandwidth-bound kernels: ptxas, ctest -R CudaOps|CudaVec|CudaModel (SY_KERN_TESTS,
           none skips), memory_bound_bench (SY_KERN_BENCH=0 skips)
balancing  each load-balancing method on a 110M-parameter MoE, 300 bf16 steps (corpora/brown.h5)
ckpt       bench/checkpoint_save/run.sh: checkpoint save speed against dd (SY_CKPT_DIR, SY_CKPT_BIG)
hf         bench/hf_export/check.sh: the export against Hugging Face transformers (STEPS, TRAIN_SET)
tb         a 60-step bf16 run with run.tensorboard, checked by bench/tensorboard/check.py; eval of
           its checkpoint alone at micro-batch 4
allocator  SY_CUDA_ALLOCATOR caching against async (suites, the 1.8B MoE step: SY_SPLIT_MOE_STEPS),
           every SY_CUDA_PROFILE mode (losses equal the unprofiled run's), nvtx under nsys
routing    the routing policy: the suites that read it, a 20-step bf16 run with every balancing key
sanitize   compute-sanitizer over the GPU suites, every kernel (ours, cuBLAS's, cuDNN's); tools in
           SY_SANITIZE_TOOLS (default memcheck; racecheck, synccheck and initcheck: docs/cuda.md),
           SUITE[:GTEST_FILTER] entries in SY_SANITIZE_SUITES, SY_SANITIZE_TIMEOUT_S a run (300)
nodes      bench/scaling/run.sh, on a machine with several GPUs: NCCL equivalence, alltoall_bench,
           throughput at W = 1, 2, 4, 8 (WIDTHS, STEPS), a killed rank"
all_parts=(tests example step trace ab ffn grouped attention cudnn documents optim adamw memory
           membound balancing ckpt hf tb allocator routing sanitize nodes)

if [ "${1:-}" = --list ]; then echo "$parts_help"; exit 0; fi
out=${1:?usage: bash launch/gpu_check.sh OUTDIR [PART...|all]   (--list: the parts)}
shift
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(tests example)
[ "${parts[*]}" = all ] && parts=("${all_parts[@]}")
for part in "${parts[@]}"; do
  [[ " ${all_parts[*]} " == *" $part "* ]] || {
    echo "gpu_check.sh: unknown part '$part'; the parts:" >&2
    echo "$parts_help" >&2
    exit 2
  }
done

sy_init "$out" "${SY_GPU_CHECK_BUDGET_S:-}"
top=$sy_out
build=${SY_GPU_BUILD_DIR:-build-gpu}
nvcc=nvcc  # the build's own, once it is configured

# The token file to train on: corpora/brown.h5 when present (launch/setup.sh prepares it), else
# one prepared from the repository's own text files, so that a part needs nothing outside it.
# Sets data and evals (a validation size that file holds).
prepare_data() {
  data=corpora/brown.h5
  evals=()
  [ -f "$data" ] && return 0
  data="$build/repo_text.h5"
  evals=(--set eval.tokens=16384)
  sy_do mkdir -p "$build/repo_text"
  sy_dry || find . \( -path ./.git -o -path './build*' -o -path ./.deps -o -path ./runs \
    -o -path ./corpora \) -prune -o -type f \( -name '*.md' -o -name '*.cpp' -o -name '*.h' \
    -o -name '*.cu' -o -name '*.cuh' -o -name '*.yaml' -o -name '*.txt' -o -name '*.sh' \) -print |
    sort | xargs cat > "$build/repo_text/corpus.txt"
  sy_step prepare_data "$build/switchyard" prepare-data --format text --input "$build/repo_text" \
    --output "$data"
}

# ptxas -v of model/cuda/FILE.cu as built (sm_90): registers, spills, stack per kernel.
ptxas_of() {
  sy_step -l ptxas "ptxas $1" "$nvcc" -std=c++20 -O3 -arch=sm_90 -I. -Xptxas -v \
    -c "model/cuda/$1.cu" -o "$build/$1_ptxas.o"
}

suite() { sy_once "$1" "$build/tests/$1" "${@:2}"; }

part_tests() {
  # -V keeps each test's printed errors and tolerances in the log.
  sy_step ctest_gpu ctest --test-dir "$build" -L gpu -V -j 4 --timeout 600 && return 0
  # Keep the evidence: ctest's view of the tests, and the gpu suites run directly.
  sy_dry || {
    echo "---- ctest -N -L gpu"
    ctest --test-dir "$build" -N -L gpu
    for f in "$build"/tests/test_cuda_ops*_tests.cmake; do
      echo "---- head $f"
      head -n 12 "$f"
    done
  } >> "$sy_out/ctest_gpu.log" 2>&1
  sy_step -l ctest_gpu test_cuda_ops "$build/tests/test_cuda_ops"
  sy_step -l ctest_gpu test_cuda_model "$build/tests/test_cuda_model"
  grep -E 'tests passed|tests failed' "$sy_out/ctest_gpu.log" 2>/dev/null | tail -n 1
  return 1
}

part_example() {
  local data evals run_dir="$build/runs/gpu-check" precision
  prepare_data
  sy_do rm -rf "$run_dir"
  sy_step train_bf16 "$build/switchyard" train configs/example.yaml --set run.backend=cuda \
    --set run.precision=bf16 --set "data.path=$data" --set train.steps=300 --set eval.every=100 \
    --set "run.dir=$run_dir" "${evals[@]}"
  sy_dry || { echo "---- $run_dir/metrics.jsonl (last lines)"; tail -n 5 "$run_dir/metrics.jsonl"; } \
    >> "$sy_out/train_bf16.log" 2>&1
  [ "${SY_GPU_CHECK_BENCH:-1}" = 0 ] && return "$sy_failed"  # the training run only

  local bench=("$build/sy_bench_train")
  local example=(configs/example.yaml --set run.backend=cuda --set "data.path=$data")
  # About 100M parameters: 6 MoE layers of 8 experts (top-2), d_model 768, seq_len 512.
  local moe100m=("${example[@]}" --set name=moe-100m --set model.d_model=768 --set model.n_layers=6
    --set model.n_heads=12 --set model.seq_len=512 --set moe.num_experts=8
    --set moe.expert_hidden=768 --set train.micro_batch_size=8)
  for precision in bf16 fp32; do
    sy_step -l bench "bench example $precision" "${bench[@]}" "${example[@]}" \
      --set "run.precision=$precision" --steps 110 --warmup 10
  done
  for precision in bf16 fp32; do
    sy_step -l bench "bench moe-100m $precision" "${bench[@]}" "${moe100m[@]}" \
      --set "run.precision=$precision" --steps 60 --warmup 10
  done
  # Diagnosis: the same with every kernel module loaded up front (CUDA loads lazily by default).
  sy_step -l bench "bench example eager" env CUDA_MODULE_LOADING=EAGER "${bench[@]}" \
    "${example[@]}" --set run.precision=bf16 --steps 110 --warmup 10
  # Where a step's time goes, per op (each op synchronised: totals, not throughput).
  for precision in bf16 fp32; do
    sy_step -l bench "bench example profile $precision" env SY_CUDA_PROFILE=1 "${bench[@]}" \
      "${example[@]}" --set "run.precision=$precision" --steps 60 --warmup 10
  done
  grep -h '^{' "$sy_out/bench.log" 2>/dev/null | tee -a "$SY_SUMMARY"
  return "$sy_failed"
}

part_step() {
  sy_runner gpu_step env SY_BUILD_DIR="$build" bash bench/gpu_step/run.sh "$sy_out"
}

part_trace() {
  local config configs
  read -ra configs <<< "${SY_TRACE_CONFIGS:-moe}"
  for config in "${configs[@]}"; do
    sy_step "run_$config" env CUDA_INJECTION64_PATH="$PWD/$build/libsy_kernel_trace.so" \
      SY_KERNEL_TRACE="$sy_out/$config.csv" "$build/sy_bench_train" "configs/bench/$config.yaml" \
      --steps 12 --warmup 5
    # Five steps skipped: their optimizer passes each try one launch shape (docs/cuda.md).
    sy_step -o "$sy_out/$config.txt" "gaps_$config" python3 bench/kernel_trace/gaps.py \
      "$sy_out/$config.csv" --skip 5
    sy_dry || head -n 30 "$sy_out/$config.txt"
  done
}

part_ab() {
  sy_runner ab env AB_BUILD="$build" bash bench/ab/run.sh "$sy_out"
}

part_cudnn() {
  local seconds=${SY_CUDNN_SWEEP_S:-480}
  sy_step -o "$sy_out/sweep.md" sweep python3 bench/cudnn_configs/sweep.py \
    --bench "$build/attention_bench" --out "$sy_out" --budget-s "$seconds"
  sy_dry || tail -n 4 "$sy_out/sweep.md"
}

part_documents() {
  # Against the CPU, repeatable, documents that do not see each other, chunks bitwise; the cuDNN
  # cases skip visibly, with cuDNN's reason, where it declines the ragged graphs.
  suite test_cuda_document_mask
  sy_runner ab env AB_BUILD="$build" AB_REF=. AB_BASE_ENV=SY_CUDNN_DOCUMENTS=0 \
    AB_SET="data.document_mask=true" AB_CONFIGS="${SY_DOCS_CONFIGS:-moe}" \
    AB_ROUNDS="${SY_DOCS_ROUNDS:-2}" bash bench/ab/run.sh "$sy_out"
  echo "---- test_cuda_document_mask: $(sy_gtest "$sy_out/test_cuda_document_mask.log")"
  grep -hE '^\[  FAILED  \] [A-Za-z]|^\[ kernel|declined' "$sy_out/test_cuda_document_mask.log" \
    2>/dev/null | head -n 30
  return "$sy_failed"
}

part_nodes() {
  sy_runner scaling env SY_BUILD_DIR="$build" bash bench/scaling/run.sh "$sy_out"
}

part_ffn() {
  local cases name
  read -ra cases <<< "${SY_FFN_CASES:-}"
  # The grouped kernels against the CPU and whole bf16 models against cublas (test_cuda_grouped);
  # test_cuda_model and test_cuda_ops run the grouped experts under moe.expert_kernel auto.
  for name in test_cuda_grouped test_cuda_model test_cuda_ops; do suite "$name"; done
  sy_runner run bash bench/expert_ffn/run.sh "$build" "$sy_out" "${cases[@]}"
  echo "---- tests (logs: $sy_out/<suite>.log)"
  for name in test_cuda_grouped test_cuda_model test_cuda_ops; do
    echo "$name: $(sy_gtest "$sy_out/$name.log")"
  done
  grep -hE '^\[  FAILED  \] [A-Za-z]' "$sy_out"/test_cuda_*.log 2>/dev/null | sort -u | head -n 20
  grep -hE '^\[ (kernel|rel err|model) ' "$sy_out/test_cuda_grouped.log" 2>/dev/null
  grep -hE '^\[ rel err  \] .*(gradients|loss)' "$sy_out/test_cuda_model.log" 2>/dev/null
  echo "---- benchmark (logs: $sy_out/expert_ffn_*.log; the table above)"
  grep -E '^== ' "$sy_out/expert_ffn_bench.log" 2>/dev/null
  return "$sy_failed"
}

part_grouped() {
  local gg=$build args
  read -ra args <<< "${SY_GG_ARGS:-}"
  if [ "${SY_GG_DEBUG:-0}" = 1 ]; then  # a deadlock traps and is reported
    gg="$build-ggdebug"
    { sy_configure "$gg" -DSY_CUDA=ON -DCMAKE_CUDA_FLAGS=-DSY_GG_SM90_DEBUG=1 &&
      sy_build "$gg" grouped_gemm_check; } || return 1
  fi
  # Registers, spills and stack of each kernel instantiation (ptxas -v on the sm_90a file alone:
  # 36 = 3 versions (1, 2, 4) x 2 tile widths x 3 forms x 2 C types, + 2 of version 3: wgrad into
  # f32 at both widths), the PTX wgmma wait pattern, the TMA reduce-adds (versions 3, 4) and
  # stores (version 4), the SASS.
  local arch=(-std=c++20 -I. "-gencode=arch=compute_90a,code=sm_90a")
  sy_step -l ptxas ptxas "$nvcc" "${arch[@]}" -Xptxas -v -c model/cuda/grouped_gemm_sm90.cu \
    -o "$sy_out/grouped_gemm_sm90.o"
  sy_step -l ptxas ptx "$nvcc" "${arch[@]}" -ptx model/cuda/grouped_gemm_sm90.cu \
    -o "$sy_out/grouped_gemm_sm90.ptx"
  local cuobjdump
  cuobjdump=$(dirname "$nvcc")/cuobjdump
  command -v "$cuobjdump" > /dev/null || cuobjdump=cuobjdump
  sy_step -o "$sy_out/sass.txt" sass "$cuobjdump" --dump-sass "$sy_out/grouped_gemm_sm90.o"
  sy_step grouped_gemm_check "$gg/grouped_gemm_check" "${args[@]}"
  local rc=$?
  local log=$sy_out/ptxas.log sass=$sy_out/sass.txt
  echo "ptxas: $(grep -c 'Used [0-9]* registers' "$log" 2>/dev/null) kernels (38 expected)," \
    "$(grep -c '0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads' "$log" 2>/dev/null)" \
    "without stack or spills, serialisation warnings: $(grep -ci 'serializ' "$log" 2>/dev/null)"
  echo "PTX: wgmma.wait_group 1 in $(grep -c 'wgmma.wait_group.sync.aligned 1' \
    "$sy_out/grouped_gemm_sm90.ptx" 2>/dev/null) places (26 expected: one per v2, v3 and v4 kernel)," \
    "cp.reduce.async.bulk.tensor in $(grep -c 'cp.reduce.async.bulk.tensor' \
    "$sy_out/grouped_gemm_sm90.ptx" 2>/dev/null) (48 expected: v3's 12 slices, v4's 36 f32 boxes)," \
    "TMA stores in $(grep -c 'cp.async.bulk.tensor.[23]d.global.shared' \
    "$sy_out/grouped_gemm_sm90.ptx" 2>/dev/null) (54 expected: v4's boxes)"
  echo "SASS: $(grep -c HGMMA "$sass" 2>/dev/null) HGMMA, $(grep -c UTMALDG "$sass" 2>/dev/null)" \
    "UTMALDG, $(grep -c 'WARPGROUP.DEPBAR.LE gsb0, 0x1' "$sass" 2>/dev/null)" \
    "WARPGROUP.DEPBAR.LE ..., 0x1 (v2 waits), $(grep -c UTMAREDG "$sass" 2>/dev/null)" \
    "UTMAREDG (v3, v4), $(grep -c UTMASTG "$sass" 2>/dev/null) UTMASTG (v4)"
  log=$sy_out/grouped_gemm_check.log
  grep -E '^(device|SKIP|FAIL|HANG|CUDA ERROR|CUBLAS ERROR)' "$log" 2>/dev/null | head -n 30
  sed -n '/^TFLOP\/s/,$p' "$log" 2>/dev/null
  grep -E '^(ALL PASSED|FAILED):' "$log" 2>/dev/null | grep -q . ||
    echo "grouped_gemm_check exit status $rc (0 = all passed; 1 = failures; 3 = a hang; log: $log)"
  return "$sy_failed"
}

part_attention() {
  ptxas_of flash_attention
  # The attention tests: flash against the CPU reference (bf16, f32; S 1..1024; Dh 16, 64, 128),
  # the causal mask, determinism; the CPU flash reference; the whole model on the GPU (flash by
  # default there) against the CPU.
  sy_step ctest ctest --test-dir "$build" -R 'Flash|Attention|CudaModel|cuda_model' \
    --output-on-failure -V --timeout 900
  sy_step bench "$build/attention_bench"
  python3 -c 'import torch' > /dev/null 2>&1 && sy_step torch python3 bench/attention_torch.py

  local log=$sy_out/ctest.log
  echo "== ptxas (registers, spills)"
  awk '
  /Compiling entry/ { name = ""; if (match($0, /flash_(forward|backward_dq|backward_dkdv)_kernelILi[0-9]+/)) {
      s = substr($0, RSTART + 6, RLENGTH - 6); sub(/_kernelILi/, " Dh=", s); name = s } }
  name != "" && /spill stores/ { match($0, /[0-9]+ bytes spill stores/); spill = substr($0, RSTART, RLENGTH) }
  name != "" && /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/);
    printf "  %-22s %s, %s\n", name, substr($0, RSTART, RLENGTH), spill; name = "" }' \
    "$sy_out/ptxas.log" 2>/dev/null
  echo "== ctest: $(grep -E 'tests passed|tests failed' "$log" 2>/dev/null | tail -n 1)"
  grep -E '^\s*[0-9]+/[0-9]+ Test .*(Failed|Exception|Timeout)' "$log" 2>/dev/null | head -n 20
  echo "== flash relative L2 errors (worst over S and Dh; tolerances in docs/cuda.md)"
  grep -E '\[ rel err  \] flash' "$log" 2>/dev/null | sed 's/.*\[ rel err  \] //' | sort -u |
    awk 'NF >= 6 { key = sprintf("%-28s %-4s %-5s", $1, $2, $5); e = $6 + 0;
      if (!(key in m) || e > m[key]) { m[key] = e; tol[key] = $8 } }
      END { for (k in m) printf "  %s worst %.3e (tol %s\n", k, m[k], tol[k] }' | sort
  log=$sy_out/bench.log
  grep -m1 -E '^flash vs reference' "$log" 2>/dev/null
  grep -m1 -E '^peak device memory' "$log" 2>/dev/null
  grep -m1 '^causal attention' "$log" 2>/dev/null
  grep '^|' "$log" 2>/dev/null
  grep '^| torch' "$sy_out/torch.log" 2>/dev/null
  return "$sy_failed"
}

part_optim() {
  # Fused == per-tensor bitwise, norms, determinism (test_cuda_optim); the CPU optimizer; the
  # per-tensor AdamW op against the CPU; the 50-step model runs, which go through the fused pass.
  suite test_cuda_optim
  suite test_optim
  sy_once test_cuda_ops_adamw "$build/tests/test_cuda_ops" --gtest_filter='*AdamW*:*SumSquares*'
  suite test_cuda_model
  # 57 x 32M fp32 parameters with bf16 copies, fused against per tensor.
  sy_step bench_optimizer "$build/sy_bench_optimizer" --tensors "${SY_OPTIM_TENSORS:-57}" \
    --numel "${SY_OPTIM_NUMEL:-33554432}"
  sy_step bench_train_example_bf16 "$build/sy_bench_train" configs/example.yaml \
    --set run.backend=cuda --set run.precision=bf16 --steps 60
  echo "---- gtest results"
  for f in "$sy_out"/test_*.log; do
    [ -f "$f" ] && printf '%-26s %s\n' "$(basename "$f" .log)" "$(sy_gtest "$f")"
  done
  grep -h "norm squares:" "$sy_out/test_cuda_optim.log" 2>/dev/null
  echo "---- bf16 training step (example config)"
  tail -n 1 "$sy_out/bench_train_example_bf16.log" 2>/dev/null
  echo "---- optimizer pass (sy_bench_optimizer)"
  grep -A4 "^optimizer pass" "$sy_out/bench_optimizer.log" 2>/dev/null
  return "$sy_failed"
}

part_adamw() {
  # SHAPE or SHAPE:PARTS (SY_ADAMW_PARTS; unset: the shape's own default).
  local round entry parts shapes
  read -ra shapes <<< "${SY_ADAMW_SHAPES:-wide wide2 wide2:16 mid mid:16 short short4 short8}"
  sy_step copy_bench "$build/copy_bench"
  # Rounds of every shape in turn, so that a drift of the card shows as one between rounds.
  for round in $(seq "${SY_ADAMW_ROUNDS:-2}"); do
    for entry in "${shapes[@]}"; do
      parts=()
      [[ $entry == *:* ]] && parts=("SY_ADAMW_PARTS=${entry#*:}")
      sy_step -l adamw_shapes "adamw $entry, round $round" env SY_ADAMW_SHAPE="${entry%%:*}" \
        "${parts[@]}" "$build/sy_bench_optimizer" --layout training --repeats 8
    done
  done
  sy_step test_cuda_optim_shapes "$build/tests/test_cuda_optim" \
    --gtest_filter='CudaOptim.BlocksPerChunkGiveTheSameBits'
  echo "---- copies (copy_bench)"
  grep '^|' "$sy_out/copy_bench.log" 2>/dev/null
  echo "---- the update pass by SY_ADAMW_SHAPE (ms, TB/s)"
  local passes
  passes=$(awk '/SY_ADAMW_SHAPE=/ { shape = ""
         for (i = 1; i <= NF; ++i) if ($i ~ /^SY_ADAMW_(SHAPE|PARTS)=/) shape = shape " " $i }
       $1 == "fused" { print shape, $3, $6 }' "$sy_out/adamw_shapes.log" 2>/dev/null)
  echo "$passes"
  # The settings to time the step with: each entry's mean over the rounds, fastest first.
  echo "---- mean ms over the rounds, fastest first, against the default (wide, 4 parts)"
  awk 'NF >= 3 { key = $1; for (i = 2; i <= NF - 2; ++i) key = key " " $i
         sum[key] += $(NF - 1); ++n[key] }
       END { wide = "SY_ADAMW_SHAPE=wide"; base = n[wide] ? sum[wide] / n[wide] : 0
             for (k in sum) {
               m = sum[k] / n[k]
               against = base ? sprintf("  (%+.1f%%)", 100 * (m / base - 1)) : ""
               printf "%8.3f  %s%s\n", m, k, against } }' <<< "$passes" | sort -n
  echo "---- test_cuda_optim_shapes: $(sy_gtest "$sy_out/test_cuda_optim_shapes.log")"
  return "$sy_failed"
}

# The shared backward workspace and train.recompute (docs/cuda.md, Memory): per config and mode,
# ms/step, peak memory (GiB, held by the caching allocator) and every step's loss, which must be
# the same across modes (bitwise: the summary's losses and gradient norms, every digit).
part_memory() {
  # ms|GiB|losses of sy_bench_train's summary line.
  local memory_row='
import json, sys
line = sys.stdin.read().strip()
if line:
    s = json.loads(line)
    losses = " ".join(repr(l) for l in s["losses"] + s.get("grad_norms", []))
    ms, gib = s["step_ms"], s["peak_memory_bytes"] / 2**30
    print(f"{ms:.1f}|{gib:.2f}|{losses}")'
  local t cfg mode log rc reference losses ms gib row rows=()
  # Five warm-up steps: their optimizer passes each try one launch shape (docs/cuda.md).
  local steps=${SY_MEMORY_STEPS:-9} warmup=${SY_MEMORY_WARMUP:-5}
  local modes=${SY_MEMORY_MODES:-none norms attention layer}
  for t in test_recompute test_cuda_recompute test_cuda_model; do sy_once -t 300 "$t" "$build/tests/$t"; done
  for cfg in ${SY_MEMORY_CONFIGS:-moe dense}; do
    reference=""
    for mode in $modes; do
      log="$sy_out/$cfg-$mode.log"
      sy_step -t 240 "$cfg-$mode" "$build/sy_bench_train" "configs/bench/$cfg.yaml" \
        --set "train.recompute=$mode" --steps "$steps" --warmup "$warmup"
      rc=$?
      sy_dry && continue
      row=$(grep '^{' "$log" | tail -n 1 | python3 -c "$memory_row")
      if [ "$rc" -ne 0 ] || [ -z "$row" ]; then
        rows+=("| $cfg | $mode | failed (rc $rc, $log) | | |")
        sy_failed=1
        continue
      fi
      IFS='|' read -r ms gib losses <<< "$row"
      [ -z "$reference" ] && reference=$losses
      if [ "$losses" != "$reference" ]; then
        rows+=("| $cfg | $mode | $ms | $gib | DIFFERENT from ${modes%% *}: $losses |")
        sy_fail "$cfg $mode: losses differ from ${modes%% *}'s"
      else
        rows+=("| $cfg | $mode | $ms | $gib | same as ${modes%% *}: $losses |")
      fi
    done
  done
  echo
  for t in test_recompute test_cuda_recompute test_cuda_model; do
    echo "$t: $(sy_gtest "$sy_out/$t.log")"
  done
  grep -h '^\[ memory' "$sy_out/test_cuda_recompute.log" 2>/dev/null
  echo
  echo "| config | recompute | ms/step | peak GiB | losses (every step) |"
  echo "|---|---|---|---|---|"
  [ ${#rows[@]} -eq 0 ] || printf '%s\n' "${rows[@]}"
  return "$sy_failed"
}

# The bandwidth-bound kernels (swiglu, rmsnorm, add, rope, cross_entropy, the MoE permutes).
part_membound() {
  local f tests=${SY_KERN_TESTS:-CudaOps|CudaVec|CudaModel}
  for f in swiglu rmsnorm cross_entropy permute elementwise attention; do ptxas_of "$f"; done
  # The op tests (f32 and bf16 against the CPU; the vector paths bitwise against the element-wise
  # kernels) and the whole model on the GPU against the CPU, and twice bitwise.
  [ "$tests" = none ] ||
    sy_step ctest ctest --test-dir "$build" -R "$tests" --output-on-failure -V --timeout 900
  [ "${SY_KERN_BENCH:-1}" = 0 ] || sy_step bench "$build/memory_bound_bench"

  local log=$sy_out/ctest.log
  echo "== ptxas (registers, spills)"
  local demangle=cat
  command -v c++filt > /dev/null && demangle=c++filt
  $demangle 2> /dev/null < "$sy_out/ptxas.log" | awk '
  /Compiling entry/ { name = ""; if (match($0, /[a-z0-9_]*_(vec|streaming)(<[^>]*>)?/)) name = substr($0, RSTART, RLENGTH) }
  name != "" && /spill stores/ { match($0, /[0-9]+ bytes spill stores/); spill = substr($0, RSTART, RLENGTH) }
  name != "" && /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/);
    printf "  %-44s %s, %s\n", name, substr($0, RSTART, RLENGTH), spill; name = "" }'
  echo "== relative L2 errors of the ops touched (worst per test line; tolerances in docs/cuda.md)"
  grep -E '\[ rel err  \]' "$log" 2>/dev/null |
    grep -E 'swiglu|rmsnorm|rope|cross_entropy|permute|unpermute|add' |
    sed 's/.*\[ rel err  \] //' | sort -u |
    awk '{ key = $0; sub(/ [0-9.e+-]+ \(tol.*/, "", key); e = $(NF - 2) + 0;
      if (!(key in m) || e > m[key]) { m[key] = e; line[key] = $0 } }
      END { for (k in m) print "  " line[k] }' | sort
  echo "== ctest: $(grep -E 'tests passed|tests failed' "$log" 2>/dev/null | tail -n 1)"
  grep -E '^\s*[0-9]+/[0-9]+ Test .*(Failed|Exception|Timeout)' "$log" 2>/dev/null | head -n 20
  grep -m1 '^memory-bound ops' "$sy_out/bench.log" 2>/dev/null
  grep '^|' "$sy_out/bench.log" 2>/dev/null
  return "$sy_failed"
}

# The load-balancing comparison at GPU scale (docs/load-balancing.md): a ~110M-parameter MoE
# (d_model 512, 8 layers, 16 experts of width 512, top-2, seq_len 256, 32 sequences per step) in
# bf16, the same steps from the same seed with each balancing method, against a dense model of the
# same active parameters, and capacity 1.0 with drop against reroute. Each run's folder gets
# console.log (stdout and stderr), train.log and metrics.jsonl; summary.txt one line per run.
part_balancing() {
  local data=corpora/brown.h5 entry name args override console
  if [ ! -f "$data" ]; then
    sy_dry || { sy_fail "$data is missing (launch/setup.sh prepares it)"; return 1; }
    echo "   (dry run: $data is missing here; the part needs it)"
  fi
  local model=(--set run.backend=cuda --set run.precision=bf16 --set model.d_model=512
    --set model.n_layers=8 --set model.n_heads=8 --set model.seq_len=256 --set moe.num_experts=16
    --set moe.expert_hidden=512 --set train.micro_batch_size=32 --set train.steps=300
    --set train.lr=1e-3 --set train.min_lr=1e-4 --set train.warmup_steps=30
    --set eval.every=100 --set eval.tokens=163840 --set run.log_every=10 --set "data.path=$data")
  local runs=(
    "aux-loss|"
    "no-balancing|moe.aux_loss_coef=0"
    "aux-loss-free|moe.aux_loss_coef=0 moe.bias_update_rate=0.01"
    "aux-free-sigmoid|moe.aux_loss_coef=0 moe.bias_update_rate=0.01 moe.router_score=sigmoid"
    "dense|moe.num_experts=0 model.ffn_hidden=1024"
    "cf-1.0|moe.capacity_factor=1.0"
    "cf-1.0-reroute|moe.capacity_factor=1.0 moe.overflow=reroute"
  )
  sy_dry || : > "$sy_out/summary.txt"
  for entry in "${runs[@]}"; do
    name=${entry%%|*}
    args=()
    for override in ${entry#*|}; do args+=(--set "$override"); done
    sy_step -l "$name/console" "$name" "$build/switchyard" train configs/experiments/base.yaml \
      --set "name=gpu-$name" --set "run.dir=$sy_out/$name" --set checkpoint.keep_last=1 \
      "${model[@]}" "${args[@]}"
    local rc=$?
    sy_dry && continue
    console=$sy_out/$name/console.log
    echo "$name rc=$rc ${entry#*|} :: $(grep -E 'total parameters|active parameters|peak device' \
      "$console" | tr -s ' ' | tr '\n' ';') $(tail -n 1 "$console")" | tee -a "$sy_out/summary.txt"
    rm -rf "$sy_out/$name/checkpoints"
  done
  return "$sy_failed"
}

part_ckpt() {
  sy_runner checkpoint_save env SY_CKPT_BUILD_DIR="$build" SY_CKPT_CUDA=ON \
    bash bench/checkpoint_save/run.sh "$sy_out"
}

part_hf() {
  sy_runner hf_export env SY_BUILD_DIR="$build" SY_CUDA=ON bash bench/hf_export/check.sh "$sy_out"
}

# TensorBoard's own reader against metrics.jsonl, on a short CUDA run; and eval of the run's
# checkpoint alone (its stored config and tokenizer) at another micro-batch size.
part_tb() {
  local data evals run_dir="$build/runs/gpu-check-tb"
  prepare_data
  sy_do rm -rf "$run_dir"
  sy_step train "$build/switchyard" train configs/example.yaml --set run.backend=cuda \
    --set run.precision=bf16 --set "data.path=$data" --set train.steps=60 --set eval.every=30 \
    --set eval.tokens=8192 --set run.tensorboard=true --set "run.dir=$run_dir"
  sy_step eval "$build/switchyard" eval --checkpoint "$run_dir" --set train.micro_batch_size=4
  sy_step check python3 bench/tensorboard/check.py "$run_dir"
  echo "---- the run's last val_loss, then eval's of its checkpoint (equal to 1e-6)"
  grep val_loss "$run_dir/metrics.jsonl" 2>/dev/null | tail -n 1 | cut -c1-200
  grep '^{' "$sy_out/eval.log" 2>/dev/null | tail -n 1
  echo "---- bench/tensorboard/check.py"
  tail -n 8 "$sy_out/check.log" 2>/dev/null
  return "$sy_failed"
}

# The CUDA backend's allocator, profiler and device discovery (model/cuda/device_memory.h,
# profiler.h, device.h): the GPU tests with the default allocator and with SY_CUDA_ALLOCATOR=async
# (test_cuda_model checks that steps 3-50 take no memory from the driver); test_nccl; every
# SY_CUDA_PROFILE mode on a short bf16 run of the example config (profiling changes no number);
# and the two allocators on the 1.8B MoE step (configs/bench/moe.yaml: dropless, so its shapes
# change every step). The part owns SY_CUDA_PROFILE and SY_CUDA_ALLOCATOR (it runs in a subshell).
part_allocator() {
  unset SY_CUDA_PROFILE SY_CUDA_ALLOCATOR
  local moe_steps=${SY_SPLIT_MOE_STEPS:-20} name f same plain
  suite test_cuda_ops
  suite test_cuda_model
  suite test_cuda_optim
  sy_step test_cuda_model_async env SY_CUDA_ALLOCATOR=async "$build/tests/test_cuda_model"
  sy_step test_cuda_optim_async env SY_CUDA_ALLOCATOR=async "$build/tests/test_cuda_optim"
  sy_step test_nccl ctest --test-dir "$build" -R '^test_nccl' --output-on-failure
  sy_step unknown_allocator_refused bash -c "SY_CUDA_ALLOCATOR=bogus '$build/sy_bench_train' \
    configs/example.yaml --set run.backend=cuda --set run.precision=bf16 --steps 2 --warmup 1 \
    2>&1 | tee /dev/stderr | grep -q 'SY_CUDA_ALLOCATOR must be one of caching, async'"

  local example=("$build/sy_bench_train" configs/example.yaml --set run.backend=cuda
                 --set run.precision=bf16 --steps 30 --warmup 5)
  sy_step example_plain "${example[@]}"
  sy_step example_profile_sync env SY_CUDA_PROFILE=1 "${example[@]}"
  sy_step example_profile_events env SY_CUDA_PROFILE=events "${example[@]}"
  sy_step example_profile_nvtx env SY_CUDA_PROFILE=nvtx "${example[@]}"
  sy_step example_async env SY_CUDA_ALLOCATOR=async "${example[@]}"
  if command -v nsys > /dev/null; then
    sy_step example_nsys_nvtx env SY_CUDA_PROFILE=nvtx nsys profile --trace=cuda,nvtx \
      --force-overwrite=true -o "$sy_out/example_nvtx" "${example[@]}" &&
      sy_step nsys_nvtx_ranges nsys stats --report nvtx_sum --format csv "$sy_out/example_nvtx.nsys-rep"
  fi
  local moe=("$build/sy_bench_train" configs/bench/moe.yaml --set run.backend=cuda
             --set run.precision=bf16 --steps "$moe_steps" --warmup 5)
  sy_step moe_caching "${moe[@]}"
  sy_step moe_async env SY_CUDA_ALLOCATOR=async "${moe[@]}"

  echo "---- gtest results"
  for f in "$sy_out"/test_*.log; do
    [ -f "$f" ] && printf '%-30s %s\n' "$(basename "$f" .log)" "$(sy_gtest "$f")"
  done
  echo "---- profile modes (losses must equal example_plain's)"
  plain=$(sy_field "$sy_out/example_plain.log" losses)
  for name in example_plain example_profile_sync example_profile_events example_profile_nvtx \
              example_async; do
    f=$sy_out/$name.log
    same=$([ "$(sy_field "$f" losses)" = "$plain" ] && echo same || echo DIFFERENT)
    [ "$same" = same ] || sy_dry || sy_fail "$name: losses differ from example_plain's"
    printf '%-26s losses %-9s step %8s ms  peak %8s MiB\n' "$name" "$same" \
      "$(sy_field "$f" step_ms)" "$(sy_field "$f" peak_memory_mib)"
  done
  grep -h "^SY_CUDA_PROFILE" "$sy_out"/example_profile_*.log 2>/dev/null | head -n 4
  [ -f "$sy_out/nsys_nvtx_ranges.log" ] &&
    { echo "nvtx ranges (nsys):"; sed -n '2,8p' "$sy_out/nsys_nvtx_ranges.log"; }
  echo "---- allocators on the 1.8B MoE step (bf16, dropless, $moe_steps steps, 5 warm-up)"
  printf '%-10s %10s %14s %10s  %s\n' allocator step_ms peak_MiB last_loss losses
  for name in caching async; do
    f=$sy_out/moe_$name.log
    same=$([ "$(sy_field "$f" losses)" = "$(sy_field "$sy_out/moe_caching.log" losses)" ] &&
      echo same || echo DIFFERENT)
    printf '%-10s %10s %14s %10s  %s\n' "$name" "$(sy_field "$f" step_ms)" \
      "$(sy_field "$f" peak_memory_mib)" "$(sy_field "$f" last_loss)" "$same"
  done
  return "$sy_failed"
}

# The routing policy as one struct of enums (model/routing_policy.h): the GPU suites that read
# the policy or the enum-valued keys (router ops under every RoutingRule, the balancing router
# from MoeConfig, moe.expert_kernel, model.attention_kernel cudnn, recompute); then a 20-step bf16
# run of the tiny config with every balancing option and both kernel keys set by --set, and its
# resolved config.yaml checked for their names. No number may change: the suites compare bitwise
# or at the tolerances they had.
part_routing() {
  local name
  for name in test_cuda_ops test_cuda_model test_cuda_grouped test_cuda_cudnn test_cuda_recompute; do
    suite "$name"
  done
  sy_step tokens "$build/sy_make_token_file" "$sy_out/tokens.h5" 2000000 100000
  sy_step train_balancing "$build/switchyard" train configs/tiny.yaml \
    --set data.path="$sy_out/tokens.h5" --set run.backend=cuda --set run.precision=bf16 \
    --set train.steps=20 --set run.dir="$sy_out/run_balancing" \
    --set moe.router_score=sigmoid --set moe.drop_policy=probability --set moe.overflow=reroute \
    --set moe.capacity_factor=1.0 --set moe.bias_update_rate=0.01 \
    --set model.attention_kernel=cudnn --set moe.expert_kernel=grouped
  local found
  found=$(grep -cE 'router_score: "sigmoid"|overflow: "reroute"|expert_kernel: "grouped"' \
    "$sy_out/run_balancing/config.yaml" 2>/dev/null)
  [ "${found:-0}" -eq 3 ] || sy_dry || sy_fail "run_balancing/config.yaml lacks a key (${found:-0} of 3)"
  for name in test_cuda_ops test_cuda_model test_cuda_grouped test_cuda_cudnn test_cuda_recompute; do
    printf '%-22s %s\n' "$name" "$(sy_gtest "$sy_out/$name.log")"
  done
  echo "config.yaml keys found: ${found:-0} of 3"
  return "$sy_failed"
}

# The suites under compute-sanitizer, each tool over every suite before the next tool starts. The
# model suite leaves out its training runs (50 steps and more: hours under the tools); the others
# run whole. Only memcheck by default: on these suites the other tools report what they cannot
# see rather than what our kernels do (docs/cuda.md, "Sanitizers").
sanitize_suites="test_cuda_ops test_cuda_optim test_cuda_split_float test_cuda_grouped \
test_cuda_cudnn test_cuda_document_mask test_cuda_recompute \
test_cuda_model:-*Training*:*TrackTheCpu*"

part_sanitize() {
  local sanitizer tool entry suite filter log errors
  # On PATH, else in the toolkit of the build's nvcc (bin/, or its own folder beside bin/).
  sanitizer=$(command -v compute-sanitizer) ||
    for sanitizer in "$(dirname "$nvcc")"{,/../compute-sanitizer}/compute-sanitizer; do
      [ -x "$sanitizer" ] && break
    done
  sy_dry || [ -x "$sanitizer" ] ||
    { sy_fail "no compute-sanitizer on PATH or beside $nvcc"; return 1; }
  local tools=${SY_SANITIZE_TOOLS:-memcheck}
  # What initcheck can see on this machine: a GEMM's output and a kernel's, each read by a kernel.
  [[ " $tools " == *" initcheck "* ]] && sy_step -t 120 initcheck_probe "$sanitizer" \
    --tool initcheck --print-limit 4 "$build/initcheck_probe"
  for tool in $tools; do
    for entry in ${SY_SANITIZE_SUITES:-$sanitize_suites}; do
      suite=${entry%%:*}
      filter=()
      [[ $entry == *:* ]] && filter=("--gtest_filter=${entry#*:}")
      # --error-exitcode: a finding fails the step even where every test passes.
      sy_step -t "${SY_SANITIZE_TIMEOUT_S:-300}" -l "${tool}_$suite" "$tool $suite" \
        "$sanitizer" --tool "$tool" --error-exitcode 3 --print-limit 20 \
        "$build/tests/$suite" "${filter[@]}"
    done
  done
  [ -f "$sy_out/initcheck_probe.log" ] && awk '
    /^(kernel|gemm)-written:/ { part = $1; count[part] += 0 }
    /Uninitialized/ && part != "" { ++count[part] }
    END { k = count["kernel-written:"]; g = count["gemm-written:"]
          printf "---- initcheck probe: reads flagged in the kernel-written buffer %d, in the", k
          printf " GEMM-written one %d%s\n", g,
            ((k == 0 && g > 0) ? ": the tool does not see the GEMM'"'"'s stores" : "") }' \
    "$sy_out/initcheck_probe.log"
  echo "---- findings by tool and suite (the first lines of each report in its log)"
  for log in "$sy_out"/*_test_cuda_*.log; do
    [ -f "$log" ] || continue
    errors=$(grep -hE '(ERROR|RACECHECK) SUMMARY' "$log" | tail -n 1 | sed 's/^=* *//')
    printf '  %-36s %s; %s\n' "$(basename "$log" .log)" "${errors:-no summary (stopped?)}" \
      "$(sy_gtest "$log")"
    grep -hE '^=+ +(Invalid|Uninitialized|Error|Race|Barrier|Warning|Program hit)' "$log" |
      sed 's/^=* *//' | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/      /'
  done
  return "$sy_failed"
}

# Build once, then each part in a subshell of its own (its variables and environment stay
# there), its logs in OUTDIR/PART.
sy_machine machine
{ sy_configure "$build" -DSY_CUDA=ON && sy_build "$build"; } || {
  echo "build failed: see $top/build.log" | tee -a "$SY_SUMMARY"
  exit 1
}
nvcc=$(grep -m1 '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" 2>/dev/null | cut -d= -f2)
nvcc=${nvcc:-nvcc}
results=()
status=0
for part in "${parts[@]}"; do
  began=$(date +%s)
  echo
  sy_note "######## $part"
  ( sy_out=$top/$part; mkdir -p "$sy_out"; sy_failed=0; "part_$part" )
  rc=$?
  [ "$rc" -eq 0 ] || status=1
  results+=("$(printf '%-10s %-7s %6ss  %s' "$part" "$([ "$rc" -eq 0 ] && echo ok || echo FAILED)" \
    "$(($(date +%s) - began))" "$top/$part")")
done
echo
{
  echo "---- parts (status $status; every step in $SY_SUMMARY)"
  printf '%s\n' "${results[@]}"
} | tee -a "$SY_SUMMARY"
exit "$status"
