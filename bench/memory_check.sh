#!/usr/bin/env bash
# The shared backward workspace and train.recompute on one GPU, in one command
# (docs/cuda.md, Memory):
#   bash bench/memory_check.sh [OUTDIR]        (OUTDIR defaults to $OUT, else memory_check_out)
# Builds (incrementally, in SY_BUILD_DIR=build-gpustep: the folder bench/gpu_step/run.sh uses),
# runs tests/test_recompute (CPU: bitwise equality of every mode), tests/test_cuda_recompute (the
# same on the GPU, bf16 and fp32) and tests/test_cuda_model (the model against the CPU), then
# sy_bench_train on configs/bench/{moe,dense}.yaml once per recompute mode. Prints a table last:
# per config and mode, ms/step, peak memory (GiB, held by the caching allocator) and every step's
# loss, which must be the same across modes (bitwise: the summary's 6-digit losses).
# OUTDIR gets build.log, the tests' logs, <config>-<mode>.log. Exit 0 when all of it passed.
# Environment: STEPS=6 WARMUP=2 (bench steps), CONFIGS="moe dense", MODES="none norms attention layer".
set -uo pipefail
out=${1:-${OUT:-memory_check_out}}
mkdir -p "$out"
cd "$(dirname "$0")/.."
build=${SY_BUILD_DIR:-build-gpustep}
steps=${STEPS:-6}
warmup=${WARMUP:-2}
modes=${MODES:-none norms attention layer}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
status=0

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  git log -1 --format='commit %h %s' 2>/dev/null
  git status --short 2>/dev/null | head -40
  cmake -S . -B "$build" "${generator[@]}" -DSY_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$build" -j "$(nproc)" \
      --target sy_bench_train test_recompute test_cuda_recompute test_cuda_model
} > "$out/build.log" 2>&1 || { echo "build failed: $out/build.log"; tail -30 "$out/build.log"; exit 1; }

tests=()
for t in test_recompute test_cuda_recompute test_cuda_model; do
  timeout 300 "./$build/tests/$t" > "$out/$t.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || status=1
  tests+=("$t: $(grep -E '^\[  (PASSED|FAILED) \]|tests? ran' "$out/$t.log" | tr '\n' ' ') (rc $rc)")
done
grep -h '^\[ memory' "$out/test_cuda_recompute.log" || true

rows=()
for cfg in ${CONFIGS:-moe dense}; do
  reference=""
  for mode in $modes; do
    log="$out/$cfg-$mode.log"
    timeout 240 "./$build/sy_bench_train" "configs/bench/$cfg.yaml" --set "train.recompute=$mode" \
      --steps "$steps" --warmup "$warmup" > "$log" 2>&1
    rc=$?
    json=$(grep '^{' "$log" | tail -1)
    if [ $rc -ne 0 ] || [ -z "$json" ]; then
      rows+=("| $cfg | $mode | failed (rc $rc, $log) | | |")
      status=1
      continue
    fi
    row=$(python3 - "$json" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])
print(f'{s["step_ms"]:.1f}|{s["peak_memory_bytes"] / 2**30:.2f}|{" ".join(f"{l:.6f}" for l in s["losses"])}')
EOF
)
    IFS='|' read -r ms gib losses <<< "$row"
    [ -z "$reference" ] && reference=$losses
    same="same"
    if [ "$losses" != "$reference" ]; then same="DIFFERENT"; status=1; fi
    rows+=("| $cfg | $mode | $ms | $gib | $same as ${modes%% *}: $losses |")
  done
done

echo
printf '%s\n' "${tests[@]}"
echo
echo "| config | recompute | ms/step | peak GiB | losses (every step) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $status
