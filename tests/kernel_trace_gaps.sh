#!/usr/bin/env bash
# bench/kernel_trace/gaps.py on a made-up timeline: steps cut at the marker, the busy and idle
# time a step, the device-to-host copies a step, the idle gaps by the ops around them (a
# kernel's name shortened to its last name), and the error for too few markers.
#   bash tests/kernel_trace_gaps.sh REPO_ROOT
set -uo pipefail
root=${1:?usage: kernel_trace_gaps.sh REPO_ROOT}
command -v python3 > /dev/null || { echo "SKIP: no python3"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# Two steps after the first marker, each 1 ms: a 0.1 ms gap after the optimizer pass, then a
# GEMM, a 0.05 ms copy to the host and a 0.2 ms wait for the host, then the pass again.
adamw='"void sy::cuda::(anonymous namespace)::fused_adamw_kernel(sy::cuda::TensorSlot const*, int)"'
gemm='"void gemm<float, 4>(float*, int)"'
{
  echo "start_ns,end_ns,stream,kind,bytes,name"
  for step in 0 1 2; do
    t=$((step * 1000000))
    echo "$t,$((t + 100000)),7,kernel,0,$adamw"
    [ $step = 2 ] && break
    echo "$((t + 200000)),$((t + 700000)),7,kernel,0,$gemm"
    echo "$((t + 700000)),$((t + 750000)),7,memcpy DtoH,16,\"\""
    # the next step's pass starts at t + 1 ms: 0.25 ms idle after the copy
  done
} > "$dir/trace.csv"

out=$(python3 "$root/bench/kernel_trace/gaps.py" "$dir/trace.csv" --skip 0) ||
  fail "gaps.py exited $?"
echo "$out"
echo "$out" | grep -q "^2 steps: 1.000 ms a step, GPU busy 0.650, idle 0.350 (35.0%)" ||
  fail "the step summary"
echo "$out" | grep -Eq "0\.250 +1\.0  memcpy DtoH -> fused_adamw_kernel" || fail "the gap after the copy"
echo "$out" | grep -Eq "0\.100 +1\.0  fused_adamw_kernel -> gemm" || fail "the gap after the pass"
echo "$out" | grep -Eq "0\.500 +1\.0  gemm$" || fail "the GEMM's time by name"
echo "$out" | grep -q "^device-to-host copies a step: 1.0$" || fail "the copies a step"

python3 "$root/bench/kernel_trace/gaps.py" "$dir/trace.csv" --skip 5 > /dev/null 2>&1 &&
  fail "too few markers passed"
echo "PASS"
