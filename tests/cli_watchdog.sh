#!/usr/bin/env bash
# A stalled rank under mpirun (README "Running on a cluster", parallel/watchdog.h): with
# parallel.timeout_s=5, SIGSTOP to one rank of a 2-rank training run must end the whole job with
# exit status 4 within 30 s, the healthy rank naming the collective it waited in. Once with the
# last rank stopped, once with rank 0 (the one that prints the steps). A bad timeout_s is refused
# with one line naming the key, and a healthy run at the same timeout finishes with 0 (no false
# alarm). Every process this script starts is continued and killed on exit.
# Usage: cli_watchdog.sh SWITCHYARD [cuda]
#   cuda: the same on run.backend: cuda, parallel.communicator: auto (NCCL where each rank has a
#   GPU of its own, so on 2+ GPUs; device tensors staged through MPI where the ranks share one).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
extra=()
if [ "${2:-}" = cuda ]; then
  # The plain cuBLAS kernels: this tests the watchdog, not the fast kernels' shape limits.
  extra=(--set run.backend=cuda --set parallel.communicator=auto
         --set model.attention_kernel=reference --set moe.expert_kernel=cublas)
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  echo "cuda mode: $gpus GPU(s) visible: the 2 ranks use $([ "$gpus" -ge 2 ] && echo nccl || echo mpi)"
fi
started=()  # pids of every rank and mpirun started here, for the cleanup
cleanup() {
  for pid in "${started[@]}"; do kill -CONT "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT  # replaces cli_lib.sh's, and still removes $work

tiny_run_files 'parallel: {timeout_s: 5}'

# stall RUN_DIR WHICH: starts 2 ranks, waits for 3 steps, SIGSTOPs rank WHICH (0 or 1, in the
# order mpirun started them), and checks exit 4, the time and the healthy rank's line.
stall() {
  local dir=$1 which=$2 healthy=$((1 - $2))
  mpirun -np 2 --oversubscribe --bind-to none "$switchyard" train tiny.yaml --set run.dir="$dir" \
    "${extra[@]}" >stdout.txt 2>stderr.txt &
  local job=$!
  started+=("$job")
  local ranks=()
  for _ in $(seq 1 300); do
    mapfile -t ranks < <(pgrep -P "$job" -f "switchyard train" | sort -n)
    [ "${#ranks[@]}" -eq 2 ] && [ "$(steps_logged "$dir")" -ge 3 ] && break
    sleep 0.1
  done
  started+=("${ranks[@]}")
  if [ "${#ranks[@]}" -ne 2 ] || [ "$(steps_logged "$dir")" -lt 3 ]; then
    fail "the $dir run did not start"
    return
  fi
  kill -STOP "${ranks[$which]}"
  local begin=$SECONDS
  timeout 30 tail --pid="$job" -f /dev/null
  local took=$((SECONDS - begin))
  if kill -0 "$job" 2>/dev/null; then
    fail "SIGSTOP to rank $which: the job still runs after 30 s"
    return
  fi
  wait "$job"
  local got=$?
  # The collective it waits in, and its group: an all-reduce of the step on the world or the
  # expert-data-parallel group, as a rule ("(world, NCCL on device 0)" for a device collective).
  local line="rank $healthy: [a-z_]+ \([a-z_]+[^)]*\) did not complete within 5 s; a rank is stalled or dead"
  if [ "$got" -eq 4 ] && grep -q -E "$line" stderr.txt; then
    ok "SIGSTOP to rank $which -> exit $got after ${took} s: $(grep -m1 -E "$line" stderr.txt)"
  else
    fail "SIGSTOP to rank $which -> status $got (want 4) after ${took} s"
  fi
  for pid in "${ranks[@]}"; do
    if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ]; then
      fail "rank pid $pid is left running"
    fi
  done
}

# No false alarm: 30 steps at the same timeout finish normally.
timeout 120 mpirun -np 2 --oversubscribe --bind-to none "$switchyard" train tiny.yaml \
  --set run.dir=healthy --set train.steps=30 "${extra[@]}" >stdout.txt 2>stderr.txt
got=$?
if [ "$got" -eq 0 ] && [ "$(steps_logged healthy)" -eq 30 ]; then
  ok "a healthy 30-step run at timeout_s 5 -> 0"
else
  fail "a healthy 30-step run at timeout_s 5 -> status $got (want 0), $(steps_logged healthy) steps"
fi
stall last 1
stall first 0

# The key's rule, one line naming it (exit 1).
"$switchyard" train tiny.yaml --set run.dir=bad --set parallel.timeout_s=-1 >stdout.txt 2>stderr.txt
got=$?
if [ "$got" -eq 1 ] && grep -q "parallel.timeout_s: must be >= 0" stderr.txt; then
  ok "parallel.timeout_s=-1 -> 1: $(head -1 stderr.txt)"
else
  fail "parallel.timeout_s=-1 -> status $got (want 1)"
fi

echo "cli_watchdog: $passed passed, $failures failed"
[ "$failures" -eq 0 ]
