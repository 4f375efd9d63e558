#!/usr/bin/env bash
# Several GPUs of one machine, one rank per GPU (launch/gpu_node.sh), in one command:
#   bash bench/scaling/run.sh OUTDIR
# 1. equivalence: tests/test_dist_train_nccl at -np N (every layout up to W = N against W = 1,
#    fp32 and bf16, NCCL against MPI);
# 2. the all-to-all: alltoall_bench (d_model 2048, 8192 tokens a rank, top-2, bf16) at each W;
# 3. scaling: `switchyard train` on configs/bench/moe.yaml (micro-batch 4 a rank: the work per GPU
#    stays fixed) with expert_parallel = W and with data parallelism alone (expert_parallel 1),
#    and on configs/bench/dense.yaml, at W = 1, 2, 4, 8 up to N: tokens/s (the mean of the
#    logged intervals after the first), per GPU, the efficiency against W = 1, peak memory; at
#    the widest W each run again with parallel.overlap_grad_reduce=false (the gradient
#    all-reduces after backward instead of behind it); no run saves a checkpoint at its end;
#    then the widest expert-parallel run again under SY_CUDA_PROFILE=events (where the time goes:
#    compute, all-to-all, the exchange of the counts with its wait, gradient all-reduce);
# 4. a fault: rank 1 of an N-rank run killed (SIGKILL) mid-training; the job must end, naming it,
#    within FAULT_LIMIT_S.
# OUTDIR gets each stage's log and summary.md (the tables). Exit status: 0 when every stage ran.
# Environment (optional):
#   SY_BUILD_DIR=build-gpu   build folder: configured when new, then built incrementally
#   WIDTHS="1 2 4 8"         the W to time (those above the GPU count are skipped)
#   STEPS=40 LOG_EVERY=10    training steps per run, and the interval of the tokens/s lines
#   FAULT_LIMIT_S=120        how long the killed job may take to end
#   TEXT_DATA=1              train on byte-level text (routers skew) instead of uniform tokens
#   EXTRA_SET="k=v ..."      more --set overrides for every training run (a small model to try
#                            the script: "model.d_model=256 model.n_layers=2 ...")
#   ALLTOALL_ARGS="..."      more alltoall_bench arguments (--tokens, --d-model, --backend)
set -uo pipefail
out=${1:?usage: bash bench/scaling/run.sh OUTDIR}
if [ "${SY_GPU_CHECK_DRY:-0}" = 1 ]; then  # launch/gpu_check.sh's dry run: say, do nothing
  echo "bash bench/scaling/run.sh $out"
  exit 0
fi
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here" || exit 1
mkdir -p "$out"
build=${SY_BUILD_DIR:-build-gpu}
steps=${STEPS:-40}
log_every=${LOG_EVERY:-10}
fault_limit=${FAULT_LIMIT_S:-120}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
status=0
note() { echo "$*" | tee -a "$out/summary.md"; }

gpus=$(nvidia-smi -L 2> /dev/null | wc -l)
[ "$gpus" -ge 1 ] || { echo "scaling/run.sh: no GPU visible" >&2; exit 1; }
[ -f "$build/CMakeCache.txt" ] ||
  cmake -S . -B "$build" -G Ninja -DSY_CUDA=ON -DCMAKE_BUILD_TYPE=Release > "$out/build.log" 2>&1
cmake --build "$build" -j "$(nproc)" --target switchyard alltoall_bench sy_make_token_file \
  test_dist_train_nccl >> "$out/build.log" 2>&1 ||
  { echo "scaling/run.sh: the build failed: $out/build.log" >&2; exit 1; }

: > "$out/summary.md"
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
note "# Scaling on $gpu_name x $gpus, $(date -u +%F)"

# ---- 1. equivalence -------------------------------------------------------------------------
if [ "$gpus" -ge 2 ]; then
  SY_GPUS=$gpus bash launch/gpu_node.sh "$build/tests/test_dist_train_nccl" \
    > "$out/equivalence.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || status=1
  note ""
  note "## Equivalence (test_dist_train_nccl at -np $gpus): exit $rc"
  grep -E "W, P, A|nccl against mpi|equivalence \(|as many GPUs|PASSED|FAILED" \
    "$out/equivalence.log" | sort -u | tee -a "$out/summary.md"
fi

# ---- 2. all-to-all --------------------------------------------------------------------------
note ""
note "## All-to-all (alltoall_bench, bf16, 8192 tokens a rank, d_model 2048, top-2, 8 experts)"
for w in ${WIDTHS:-1 2 4 8}; do
  if [ "$w" -gt "$gpus" ] || [ "$w" -lt 2 ]; then continue; fi
  # shellcheck disable=SC2086  # ALLTOALL_ARGS: words
  SY_GPUS=$w bash launch/gpu_node.sh "$build/alltoall_bench" --communicator nccl \
    ${ALLTOALL_ARGS:-} > "$out/alltoall_w$w.log" 2>&1 || status=1
  note ""
  tee -a "$out/summary.md" < "$out/alltoall_w$w.log"
done

# ---- 3. scaling -----------------------------------------------------------------------------
# Uniform random tokens over the configs' vocabulary: the routers stay near their initial balance
# (load cv ~0.35, as in bench/gpu_step); on learnable text they skew within ten steps (cv ~1.2)
# and the rank with the busiest experts sets the pace. TEXT_DATA=1: the byte-level text instead.
if [ "${TEXT_DATA:-0}" = 1 ]; then
  data=$out/tokens_text.h5
  [ -f "$data" ] || "$build/sy_make_token_file" "$data" 50000000 > "$out/tokens.log" 2>&1 ||
    status=1
else
  data=$out/tokens_uniform.h5
  [ -f "$data" ] || "$build/sy_make_token_file" "$data" 50000000 1048576 --uniform 32768 \
    > "$out/tokens.log" 2>&1 || status=1
fi
# "tokens/s peak_GiB load" of a run's metrics.jsonl: the mean over the logged intervals after the
# first; load = the MoE layers' load cv, mean / max over layers, averaged over those intervals
# ("-" for a dense model). A skewed router slows expert parallelism (the rank with the busiest
# experts sets the pace), so the balance stands beside each figure.
throughput() {
  python3 - "$1" << 'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
rows = [r for r in rows if r.get("tokens_per_s")]
if len(rows) < 2: print("- - -"); sys.exit()
timed = rows[1:]
cvs = [r["load_cv"] for r in timed if r.get("load_cv")]
load = "-"
if cvs:
    load = "%.2f/%.2f" % (sum(sum(c) / len(c) for c in cvs) / len(cvs),
                          sum(max(c) for c in cvs) / len(cvs))
print("%.0f %.1f %s" % (sum(r["tokens_per_s"] for r in timed) / len(timed),
                        max(r.get("peak_memory_bytes", 0) for r in rows) / 2**30, load))
EOF
}
note ""
note "## Scaling (switchyard train, $steps steps, the configs' micro-batch on each rank)"
note "| config | parallelism | W | tokens/s | per GPU | efficiency | peak GiB / GPU | load cv mean/max |"
note "|---|---|---|---|---|---|---|---|"
extra=()
for kv in ${EXTRA_SET:-}; do extra+=(--set "$kv"); done
# Each config and parallelism at every W; then, at the widest W, the same run with the gradient
# all-reduces after backward (parallel.overlap_grad_reduce=false), to show what overlapping them
# with backward gives. "moe dp" at W = 1 is "moe ep" at W = 1 (one rank): measured once.
widest=1
for w in ${WIDTHS:-1 2 4 8}; do [ "$w" -le "$gpus" ] && widest=$w; done
for run in "moe ep" "moe dp" "dense dp"; do
  read -r config mode <<< "$run"
  base=""
  for w in ${WIDTHS:-1 2 4 8} "$widest-serial"; do
    overlap=true
    case $w in *-serial) w=${w%-serial} overlap=false ;; esac
    [ "$w" -le "$gpus" ] || continue
    [ "$overlap" = false ] && [ "$w" = 1 ] && continue
    ep=1
    [ "$mode" = ep ] && ep=$w
    name=${config}_${mode}_w$w
    [ "$overlap" = false ] && name+=_serial
    dir=$out/runs/$name
    if [ "$mode" = dp ] && [ "$w" = 1 ] && [ -f "$out/runs/${config}_ep_w1/metrics.jsonl" ]; then
      dir=$out/runs/${config}_ep_w1
    else
      rm -rf "$dir"
      SY_GPUS=$w bash launch/gpu_node.sh "$build/switchyard" train "configs/bench/$config.yaml" \
        --set "data.path=$data" --set "run.dir=$dir" --set "train.steps=$steps" \
        --set "run.log_every=$log_every" --set "parallel.expert_parallel=$ep" \
        --set checkpoint.at_end=false --set "parallel.overlap_grad_reduce=$overlap" \
        "${extra[@]}" > "$out/$name.log" 2>&1 || status=1
    fi
    read -r tps peak load <<< "$(throughput "$dir/metrics.jsonl" 2> /dev/null || echo "- - -")"
    per=-
    eff=-
    if [ "$tps" != - ]; then
      per=$((${tps%.*} / w))
      [ -z "$base" ] && [ "$w" = 1 ] && base=$per
      [ -n "$base" ] && eff=$(python3 -c "print('%.2f' % ($per / $base))")
    fi
    how="$mode (expert_parallel $ep)"
    [ "$overlap" = false ] && how+=", all-reduce after backward"
    note "| $config | $how | $w | $tps | $per | $eff | $peak | $load |"
  done
done

# Where the time of the widest expert-parallel run goes: each rank's event-timed op table
# (docs/cuda.md), communication included (all_to_all, exchange counts, all_reduce).
profile_log=$out/profile_moe_ep_w$gpus.log
SY_CUDA_PROFILE=events SY_GPUS=$gpus bash launch/gpu_node.sh "$build/switchyard" train \
  configs/bench/moe.yaml --set "data.path=$data" --set "run.dir=$out/runs/profile" \
  --set "train.steps=$steps" --set "run.log_every=$log_every" \
  --set "parallel.expert_parallel=$gpus" --set checkpoint.at_end=false "${extra[@]}" \
  > "$profile_log" 2>&1 || status=1
note ""
note "## Where the time goes (moe, expert_parallel $gpus, SY_CUDA_PROFILE=events): $profile_log"
grep -E "SY_CUDA_PROFILE events|all_to_all|all_reduce|exchange counts|between ops" "$profile_log" |
  head -n 16 | tee -a "$out/summary.md"

# ---- 4. a rank killed -----------------------------------------------------------------------
if [ "$gpus" -ge 2 ]; then
  pids=$out/pids
  rm -rf "$pids" "$out/runs/fault"
  mkdir -p "$pids"
  SY_GPUS=$gpus SY_GPU_NODE_PIDS=$pids bash launch/gpu_node.sh "$build/switchyard" train \
    configs/bench/moe.yaml --set "data.path=$data" --set "run.dir=$out/runs/fault" \
    --set train.steps=100000 --set run.log_every=1 --set "parallel.expert_parallel=$gpus" \
    "${extra[@]}" \
    > "$out/fault.log" 2>&1 &
  job=$!
  for _ in $(seq 600); do  # until the run logs its third step (at most 10 minutes)
    logged=$(grep -c '"step"' "$out/runs/fault/metrics.jsonl" 2> /dev/null)
    [ "${logged:-0}" -ge 3 ] && break
    kill -0 "$job" 2> /dev/null || break
    sleep 1
  done
  start=$(date +%s)
  kill -9 "$(cat "$pids/rank_1.pid")" 2> /dev/null
  ended=no
  for _ in $(seq "$fault_limit"); do
    kill -0 "$job" 2> /dev/null || { ended=yes; break; }
    sleep 1
  done
  wait_s=$(($(date +%s) - start))
  [ "$ended" = yes ] || { kill -9 "$job" 2> /dev/null; status=1; }
  note ""
  note "## A rank killed: rank 1 of $gpus, SIGKILL after step 3: job ended: $ended, in ${wait_s} s"
  grep -m 3 -iE "rank 1|signal 9|killed" "$out/fault.log" | tee -a "$out/summary.md"
fi
exit "$status"
