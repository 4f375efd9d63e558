# shellcheck shell=bash disable=SC2034  # sy_failed and the like are read by the sourcing script
# The plumbing that launch/gpu_check.sh and the benches' own runners (bench/*/run.sh,
# bench/hf_export/check.sh) share: sourced, never run. Each step's output goes to a log of its
# own; the terminal and OUTDIR's summary.txt get one line per step with its exit status and time.
#   sy_init OUTDIR [BUDGET_S]  OUTDIR made, absolute, in $sy_out; cd to the repository root;
#                              no step starts after BUDGET_S seconds (or an inherited SY_DEADLINE)
#   sy_step [-t S] [-l LOG] [-o FILE] NAME COMMAND...
#                              COMMAND's output in $sy_out/LOG.log (default NAME; -o FILE takes
#                              stdout alone), stopped after S seconds; a failure sets sy_failed=1
#   sy_once ...                sy_step, unless the same command already ran in this check: its
#                              log is copied instead (the GPU suites that several parts read)
#   sy_runner NAME COMMAND...  a bench's own runner (it sources this file): output shown and kept
#                              in NAME.log, run in dry mode too (the runner then prints its steps)
#   sy_configure DIR [ARG...]  cmake -S . -B DIR, Release, Ninja when there; sy_build DIR [TARGET...]
#   sy_do COMMAND...           a side command (rm, cp): run, or printed in dry mode
#   sy_fail MESSAGE            a failed check that is not a command's exit status
#   sy_gtest LOG, sy_field LOG KEY, sy_machine NAME, sy_table: what the reports read and print
# SY_GPU_CHECK_DRY=1: every step prints its command instead of running it (no GPU needed).

# NVLink multicast stays off on shared machines; MPI (ctest, the CLI, the checkpoint writer) may
# run as root; one BLAS thread: the GPU runs want no CPU threads fighting them.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

sy_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sy_failed=0
sy_last_skipped=0
sy_steps=()     # one "name rc seconds" line per step, for sy_table
sy_skipped=()   # steps not started for lack of time

sy_dry() { [ "${SY_GPU_CHECK_DRY:-0}" = 1 ]; }
sy_quote() { local s; s=$(printf '%q ' "$@"); echo "${s% }"; }
sy_note() { echo "$*" | tee -a "$SY_SUMMARY"; }
sy_fail() { sy_failed=1; sy_note "   FAILED: $*"; }

sy_init() {
  local budget=${2:-}
  mkdir -p "${1:?sy_init OUTDIR}" || exit 1
  sy_out=$(cd "$1" && pwd)
  sy_began=$(date +%s)
  cd "$sy_root" || exit 1
  # The outermost script's summary.txt collects every step, a runner's called from it too.
  # So does its record of which commands ran (sy_once).
  if [ -z "${SY_SUMMARY:-}" ]; then
    export SY_SUMMARY="$sy_out/summary.txt" SY_ONCE_DIR="$sy_out/.once"
    : > "$SY_SUMMARY"
    rm -rf "$SY_ONCE_DIR"
  fi
  if [ -n "$budget" ]; then
    local end=$(($(date +%s) + budget))
    if [ -z "${SY_DEADLINE:-}" ] || [ "$end" -lt "$SY_DEADLINE" ]; then export SY_DEADLINE=$end; fi
  fi
  sy_dry && sy_note "== dry run (SY_GPU_CHECK_DRY=1): commands are printed, not run"
  return 0
}

# sy_log NAME: sets sy_log_path to $sy_out/NAME.log; the first step of this process to write a
# log starts it afresh, later ones append (not called in $(...): the record must stay here).
declare -A sy_logs_started=()
sy_log() {
  sy_log_path="$sy_out/$1.log"
  if [ -z "${sy_logs_started[$sy_log_path]:-}" ]; then
    sy_logs_started[$sy_log_path]=1
    sy_dry || { mkdir -p "$(dirname "$sy_log_path")" && : > "$sy_log_path"; }
  fi
}

sy_step() {
  local limit="" log="" stdout="" OPTIND=1 opt
  while getopts 't:l:o:' opt; do
    case $opt in
      t) limit=$OPTARG ;;
      l) log=$OPTARG ;;
      o) stdout=$OPTARG ;;
      *) echo "sy_step: bad option" >&2; return 2 ;;
    esac
  done
  shift $((OPTIND - 1))
  local name=$1 start rc left note=""
  shift
  sy_last_skipped=0
  if [ -n "${SY_DEADLINE:-}" ]; then
    left=$((SY_DEADLINE - $(date +%s)))
    if [ "$left" -lt 30 ]; then
      sy_note "== $name: skipped (time budget spent)"
      sy_skipped+=("$name")
      sy_steps+=("$(printf '%-30s %-7s %6s' "$name" skipped -)")
      sy_failed=1
      sy_last_skipped=1
      return 1
    fi
    if [ -z "$limit" ] || [ "$left" -lt "$limit" ]; then limit=$left; fi
  fi
  sy_log "${log:-$name}"
  log=$sy_log_path
  sy_note "== $name: $(sy_quote "$@")"
  if sy_dry; then
    sy_steps+=("$(printf '%-30s %-7s %6s' "$name" dry -)")
    return 0
  fi
  local run=("$@")
  [ -n "$limit" ] && run=(timeout --kill-after=10 "$limit" "$@")
  start=$(date +%s)
  echo "\$ $(sy_quote "$@")" >> "$log"
  if [ -n "$stdout" ]; then
    "${run[@]}" > "$stdout" 2>> "$log"
  else
    "${run[@]}" >> "$log" 2>&1
  fi
  rc=$?
  [ -n "$limit" ] && [ "$rc" -eq 124 ] && note=" (stopped after $limit s)"
  sy_note "   rc $rc, $(($(date +%s) - start)) s$note"
  sy_steps+=("$(printf '%-30s rc %-4s %5ss' "$name" "$rc" "$(($(date +%s) - start))")")
  [ "$rc" -eq 0 ] || sy_failed=1
  return "$rc"
}

# Which commands ran in this check, in SY_ONCE_DIR (set by the outermost sy_init): parts run in
# subshells and runners in processes of their own, so the record is on disk.
sy_once() {
  local args=("$@") OPTIND=1 opt log=""
  while getopts 't:l:o:' opt; do [ "$opt" = l ] && log=$OPTARG; done
  shift $((OPTIND - 1))
  local name=$1
  log=${log:-$name}
  mkdir -p "$SY_ONCE_DIR"
  local key rc previous
  key=$(sy_quote "${@:2}" | md5sum | cut -c1-16)
  if [ -f "$SY_ONCE_DIR/$key" ]; then
    read -r rc previous < "$SY_ONCE_DIR/$key"
    sy_note "== $name: ran already in this check (rc $rc), log copied from $previous"
    sy_log "$log"
    sy_dry || cp "$previous" "$sy_log_path"
    sy_steps+=("$(printf '%-30s rc %-4s %6s' "$name" "$rc" reused)")
    [ "$rc" -eq 0 ] || sy_failed=1
    return "$rc"
  fi
  sy_step "${args[@]}"
  rc=$?
  [ "$sy_last_skipped" = 1 ] || echo "$rc $sy_out/$log.log" > "$SY_ONCE_DIR/$key"
  return "$rc"
}

sy_runner() {
  local name=$1 start rc log
  shift
  sy_log "$name"
  log=$sy_log_path
  sy_note "== $name: $(sy_quote "$@")"
  start=$(date +%s)
  if sy_dry; then
    "$@"
    rc=$?
  else
    "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
  fi
  sy_note "   $name: rc $rc, $(($(date +%s) - start)) s"
  sy_steps+=("$(printf '%-30s rc %-4s %5ss' "$name" "$rc" "$(($(date +%s) - start))")")
  [ "$rc" -eq 0 ] || sy_failed=1
  return "$rc"
}

sy_do() {
  if sy_dry; then echo "   [dry] $(sy_quote "$@")"; else "$@"; fi
}

sy_configure() {
  local dir=$1 generator=()
  shift
  command -v ninja > /dev/null && generator=(-G Ninja)
  sy_step -l build configure cmake -S . -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
}

sy_build() {
  local dir=$1 targets=()
  shift
  [ $# -gt 0 ] && targets=(--target "$@")
  sy_step -l build build cmake --build "$dir" -j "$(nproc 2>/dev/null || echo 8)" "${targets[@]}" || {
    [ "$sy_last_skipped" = 1 ] && return 1
    sy_dry || tail -n 30 "$sy_out/build.log"
    echo "build failed: $sy_out/build.log"
    return 1
  }
}

# The machine and the tree (GPU, compilers, commit and what is uncommitted) into NAME.log.
sy_machine() {
  sy_log "$1"
  sy_dry && return 0
  {
    date -u
    nvidia-smi
    nvcc --version | tail -n 2
    cmake --version | head -n 1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    git log -1 --format='commit %h %s'
    git status --short | head -n 40
  } >> "$sy_log_path" 2>&1
}

# The gtest verdict lines of a log, on one line.
sy_gtest() {
  grep -hE '^\[  (PASSED|FAILED|SKIPPED) ' "$1" 2>/dev/null | tr '\n' ' '
}

# A key of the JSON summary line that sy_bench_train prints last; '-' when there is none.
sy_field() {
  grep -h '^{"config"' "$1" 2>/dev/null | tail -n 1 | python3 -c "
import json, sys
line = sys.stdin.read().strip()
print(json.loads(line).get('$2', '-') if line else '-')"
}

sy_table() {
  echo "---- steps (logs in $sy_out)"
  printf '%s\n' "${sy_steps[@]}"
  [ "${#sy_skipped[@]}" -eq 0 ] || echo "not started for lack of time: ${sy_skipped[*]}"
}
