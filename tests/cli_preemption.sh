#!/usr/bin/env bash
# A cluster user's faults through the CLI (README "Running on a cluster"): SIGUSR1 to mpirun (as
# a Slurm script forwards --signal's warning), SIGTERM to one rank (as Slurm's time limit sends
# it to every process) and SIGTERM to a single process stop every rank after a
# checkpoint with exit status 75, and --resume auto then repeats an uninterrupted run's losses; a
# second job on a locked run.dir is refused; a fresh run into a used run.dir needs --resume auto
# or --overwrite; lr=1e300 exits 3 without a checkpoint; a folder or an empty file as CONFIG is
# refused. Usage: cli_preemption.sh SWITCHYARD
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
# expect_exit STATUS PATTERN COMMAND...: the exit status and PATTERN in stdout or stderr.
expect_exit() {
  local status=$1 pattern=$2
  shift 2
  timeout 120 "$@" >stdout.txt 2>stderr.txt
  local got=$?
  if [ "$got" -eq "$status" ] && cat stdout.txt stderr.txt | grep -q -F -- "$pattern"; then
    ok "$* -> $got"
  else
    fail "$* -> status $got (want $status), '$pattern' found: $(cat stdout.txt stderr.txt | grep -c -F -- "$pattern")"
  fi
}

# The "loss" field of step N in a metrics.jsonl.
loss_at() { grep "^{\"step\": $2," "$1/metrics.jsonl" | sed -E 's/.*"loss": ([^,]+),.*/\1/'; }
# start_long RUN_DIR COMMAND...: runs COMMAND in the background (pid in $job), waits for 3 steps.
start_long() {
  local dir=$1
  shift
  "$@" --set run.dir="$dir" >stdout.txt 2>stderr.txt &
  job=$!
  for _ in $(seq 1 600); do
    [ "$(steps_logged "$dir")" -ge 3 ] && return 0
    sleep 0.1
  done
  return 1
}
# stopped_with RUN_DIR SIGNAL TARGET_PID: sends SIGNAL, checks status 75 and the final save.
stopped_with() {
  local dir=$1 signal=$2 target=$3 name
  name=$(ps -o comm= -p "$target")
  kill -s "$signal" "$target"
  timeout 60 tail --pid="$job" -f /dev/null
  wait "$job"
  local got=$?
  local latest
  latest=$(cat "$dir/checkpoints/latest" 2>/dev/null)
  if [ "$got" -eq 75 ] && grep -q "stopped by SIG$signal after step" stdout.txt && [ -n "$latest" ]; then
    ok "SIG$signal to $name ($dir) -> 75, $latest"
  else
    fail "SIG$signal -> status $got (want 75), latest '$latest'"
  fi
}

tiny_run_files

# ---- preemption: SIGUSR1 to mpirun (forwarded to the ranks), SIGTERM to one rank ---------------
# (SIGTERM to Open MPI 4.1's mpirun itself makes it SIGKILL the ranks 1 s later and exit 1: README.)
start_long usr1 "${mpi2[@]}" "$switchyard" train tiny.yaml || fail "the usr1 run did not start"
stopped_with usr1 USR1 "$job"
stop=$(sed -E 's/step_0*([0-9]+)\.h5/\1/' usr1/checkpoints/latest)
expect_exit 0 "resumed from usr1/checkpoints/step_" "${mpi2[@]}" "$switchyard" train tiny.yaml --resume auto \
  --set run.dir=usr1 --set train.steps=$((stop + 3))
expect_exit 0 "saved  step" "${mpi2[@]}" "$switchyard" train tiny.yaml --set run.dir=straight --set train.steps=$((stop + 3))
same=1
for step in $(seq 1 $((stop + 3))); do
  [ "$(loss_at usr1 "$step")" = "$(loss_at straight "$step")" ] && [ -n "$(loss_at straight "$step")" ] || same=0
done
if [ "$same" -eq 1 ]; then ok "stopped at step $stop and resumed: losses 1..$((stop + 3)) equal the uninterrupted run's"; else fail "resumed losses differ"; fi

start_long rank "${mpi2[@]}" "$switchyard" train tiny.yaml || fail "the rank run did not start"
rank_pid=$(pgrep -P "$job" -f "switchyard train" | tail -1)
stopped_with rank TERM "${rank_pid:-$job}"

# ---- run directories --------------------------------------------------------------------------
start_long locked "$switchyard" train tiny.yaml || fail "the locked run did not start"
first=$job
expect_exit 1 "is in use by another job" "$switchyard" train tiny.yaml --resume auto --set run.dir=locked
job=$first
stopped_with locked TERM "$first"  # the first job was untouched: it still stops and saves cleanly
expect_exit 1 "already holds a run" "$switchyard" train tiny.yaml --set run.dir=locked --set train.steps=2
expect_exit 2 "cannot be combined with --resume" "$switchyard" train tiny.yaml --resume auto --overwrite
expect_exit 0 "--overwrite: moved the old run to locked.old-" "$switchyard" train tiny.yaml --overwrite \
  --set run.dir=locked --set train.steps=2
[ -f locked.old-*/checkpoints/latest ] && ok "the old run is kept aside" || fail "no locked.old-*"

# ---- divergence and early checks --------------------------------------------------------------
expect_exit 3 "the weights are not finite after the update, so no checkpoint is written" \
  "${mpi2[@]}" "$switchyard" train tiny.yaml --set run.dir=huge --set train.lr=1e300 \
  --set train.min_lr=1e300 --set train.steps=4 --set checkpoint.every=1
[ ! -e huge/checkpoints/latest ] && ok "lr=1e300 left no checkpoint" || fail "lr=1e300 left $(cat huge/checkpoints/latest)"
mkdir -p folder.yaml && : > empty.yaml
expect_exit 1 "folder.yaml: is a folder, not a config file" "$switchyard" train folder.yaml
expect_exit 1 "empty.yaml: is empty" "$switchyard" train empty.yaml
: > blocker
expect_exit 1 "checkpoint.dir blocker/checkpoints: cannot create" "$switchyard" train tiny.yaml \
  --set run.dir=blocked --set checkpoint.dir=blocker/checkpoints --set train.steps=2

echo "cli_preemption: $passed passed, $failures failed"
[ "$failures" -eq 0 ]
