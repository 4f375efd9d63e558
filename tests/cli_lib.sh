# shellcheck shell=bash
# Sourced first by the CLI's end-to-end scripts (tests/cli_*.sh SWITCHYARD ...): sets
# $switchyard to the binary's absolute path and moves into $work, a fresh folder removed on exit,
# with the environment mpirun needs in a container (root) and one BLAS thread per rank. Resolve
# any other relative argument before sourcing it: it changes the directory.
switchyard=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1

# Pass/fail bookkeeping shared by the scripts: ok/fail print one line each; fail shows the tail
# of the last command's stderr.txt and stdout.txt.
failures=0
passed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() {
  echo "FAIL: $*"
  sed 's/^/  | /' stderr.txt 2>/dev/null | tail -8
  sed 's/^/  > /' stdout.txt 2>/dev/null | tail -4
  failures=$((failures + 1))
}

# Lines HDF5 printed itself into stderr.txt (its error stack, or its exit handler's "HDF5:
# infinite loop closing library"): none may reach a user, whose one line says what failed.
hdf5_lines() { grep -c "^HDF5" stderr.txt; }

# The error contract. expect STATUS PATTERN COMMAND...: the exit status, and stderr with exactly
# one line holding PATTERN (a fixed string), no other line saying "error", and no line from HDF5
# itself.
expect() {
  local status=$1 pattern=$2
  shift 2
  timeout 120 "$@" >stdout.txt 2>stderr.txt
  local got=$? matches errors hdf5
  matches=$(grep -c -F -- "$pattern" stderr.txt)
  errors=$(grep -c "error" stderr.txt)
  hdf5=$(hdf5_lines)
  if [ "$got" -eq "$status" ] && [ "$matches" -eq 1 ] && [ "$errors" -le 1 ] && [ "$hdf5" -eq 0 ]
  then
    ok "$*"
  else
    fail "$* -> status $got (want $status), $matches lines holding '$pattern', $errors error" \
      "lines, $hdf5 HDF5 lines"
  fi
}
# expect_ok PATTERN COMMAND...: exit status 0, no line saying "error" on stderr, and PATTERN (a
# fixed string; "" for any output) in stdout.
expect_ok() {
  local pattern=$1
  shift
  timeout 300 "$@" >stdout.txt 2>stderr.txt
  local got=$?
  if [ "$got" -eq 0 ] && ! grep -q "error" stderr.txt && grep -q -F -- "$pattern" stdout.txt; then
    ok "$*"
  else
    fail "$* -> status $got, '$pattern' in stdout: $(grep -c -F -- "$pattern" stdout.txt)"
  fi
}
# check DESCRIPTION COMMAND...: a plain assertion.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else : >stderr.txt; : >stdout.txt; fail "$what"; fi
}
# The summary line; the script's status.
finish() {
  echo "$passed passed, $failures failed (of $((passed + failures)))"
  [ "$failures" -eq 0 ]
}
# shellcheck disable=SC2034  # used by the scripts that source this one
mpi2=(mpirun -np 2 --oversubscribe --bind-to none)

# Steps of RUN_DIR/metrics.jsonl written so far.
steps_logged() {
  local count
  count=$(grep -c '^{"step"' "$1/metrics.jsonl" 2>/dev/null)
  echo "${count:-0}"
}

# tiny_run_files [YAML_LINE...]: tokens.h5 from a small repeated text, and tiny.yaml: a 2-layer
# MoE that trains for ever at a constant learning rate (min_lr = lr, no warm-up, so that a run
# stopped early and resumed follows the same schedule), with YAML_LINEs appended.
tiny_run_files() {
  mkdir -p text && for i in $(seq 1 300); do
    echo "line $i: the experts route tokens, and tokens find experts."
  done > text/a.txt
  "$switchyard" prepare-data --input text --format text --output tokens.h5 >/dev/null ||
    { echo "FAIL: prepare-data"; exit 1; }
  cat > tiny.yaml <<'YAML'
model: {vocab_size: 256, seq_len: 16, d_model: 16, n_layers: 2, n_heads: 2, ffn_hidden: 32}
moe: {num_experts: 4, top_k: 2, expert_hidden: 16}
train: {micro_batch_size: 2, steps: 100000, lr: 0.003, min_lr: 0.003, warmup_steps: 0}
data: {path: tokens.h5}
eval: {every: 0, tokens: 0}
checkpoint: {every: 0}
run: {log_every: 1}
YAML
  local line
  for line in "$@"; do echo "$line" >> tiny.yaml; done
}
