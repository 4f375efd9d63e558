#!/usr/bin/env bash
# bench/ab/report.py on made-up runs: the table, "equal" when both sides' losses (and gradient
# norms, where the runs print them) match and "DIFFERENT", with how far apart, when they do not,
# --require-equal's exit status, a side without runs, and the memory_bound_bench rows. Also
# bench/ab/run.sh in dry mode (its commands, nothing run).
#   bash tests/ab_report.sh REPO_ROOT
set -uo pipefail
root=${1:?usage: ab_report.sh REPO_ROOT}
command -v python3 > /dev/null || { echo "SKIP: no python3"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

run_line() {  # run_line SIDE ROUND STEP_MS LOSS [GRAD_NORM]: without a norm, an older log's line
  local norms=""
  [ $# -ge 5 ] && norms=", \"grad_norms\": [3.5, $5]"
  echo "AB $1 $2 {\"config\": \"c\", \"step_ms\": $3, \"tokens_per_s\": $((8192000 / ${3%.*})),"\
    "\"peak_memory_bytes\": 2147483648, \"first_loss_exact\": 10.5, \"losses\": [10.5, $4]$norms}"
}
{
  echo "step 1 | loss 10.5"
  run_line base 1 80.0 10.25 3.25
  run_line new 1 78.0 10.25 3.25
  run_line base 2 80.5 10.25 3.25
  run_line new 2 77.5 10.25 3.25
} > "$dir/moe.log"
{  # a baseline built before the norms were printed: its losses to 6 decimals, equal
  run_line base 1 50.0 10.25
  run_line new 1 50.0 10.250000000000002 3.25
} > "$dir/old.log"
{  # the same losses, another gradient norm: not equal
  run_line base 1 70.0 10.25 3.25
  run_line new 1 69.0 10.25 3.2500000000000004
} > "$dir/fine.log"
{
  run_line base 1 60.0 10.25
  run_line new 1 59.0 10.3
} > "$dir/dense.log"
{
  echo "AB base 1 rmsnorm_backward             0.0712 ms"
  echo "AB new 1 rmsnorm_backward             0.0597 ms"
} > "$dir/membound.log"

report=$(python3 "$root/bench/ab/report.py" "$dir") || fail "report exited $? on complete runs"
grep -q "| base | 80.000, 80.500 | 80.250 |" <<< "$report" || fail "base row: $report"
grep -q "| new | 78.000, 77.500 | 77.750 |" <<< "$report" || fail "new row: $report"
grep -q "\-2.500 ms a step (-3.12%); losses and grad norms equal" <<< "$report" ||
  fail "moe verdict: $report"
grep -q "losses (6 decimals) DIFFERENT" <<< "$report" || fail "dense verdict: $report"
grep -q "(-1.43%); losses and grad norms DIFFERENT" <<< "$report" || fail "fine verdict: $report"
grep -q "(+0.00%); losses (6 decimals) equal" <<< "$report" || fail "old-baseline verdict: $report"
grep -q "first loss 0.0e+00, losses up to 4.9e-03, grad norms up to 0.0e+00" <<< "$report" ||
  fail "dense distance: $report"
grep -q "losses up to 0.0e+00, grad norms up to 1.4e-16" <<< "$report" ||
  fail "fine distance: $report"
grep -q "| rmsnorm_backward | 0.0712 | 0.0597 | 0.838 |" <<< "$report" || fail "membound: $report"
[ -f "$dir/ab.md" ] || fail "no ab.md"
python3 "$root/bench/ab/report.py" "$dir" --require-equal > /dev/null &&
  fail "--require-equal passed with different losses"
sed -i '/^AB new/d' "$dir/dense.log"
python3 "$root/bench/ab/report.py" "$dir" > /dev/null && fail "a side without runs passed"

# The default baseline (HEAD) needs a git checkout; a source tree without one skips this part.
if git -C "$root" rev-parse --verify --quiet HEAD > /dev/null 2>&1; then
  dry=$(cd "$root" && SY_GPU_CHECK_DRY=1 AB_CONFIGS="moe dense" AB_ROUNDS=1 \
    bash bench/ab/run.sh "$dir/dry" 2>&1) || fail "dry run exited $?: $dry"
  grep -q "export HEAD" <<< "$dry" || fail "dry run: no export of HEAD: $dry"
  grep -q "base moe round 1" <<< "$dry" || fail "dry run: no base moe run: $dry"
  grep -q "new dense round 1" <<< "$dry" || fail "dry run: no new dense run: $dry"
fi
# A setting against another on one build: no export, one build, each side's environment.
dry=$(cd "$root" && SY_GPU_CHECK_DRY=1 AB_REF=. AB_BASE_ENV=SY_GG_SM90_BAND=0 \
  AB_NEW_ENV=SY_GG_SM90_BAND=8 AB_CONFIGS=moe AB_ROUNDS=1 bash bench/ab/run.sh "$dir/dry2" 2>&1) ||
  fail "dry run of AB_REF=. exited $?: $dry"
grep -q "export" <<< "$dry" && fail "AB_REF=. exported a baseline: $dry"
grep -q "build base" <<< "$dry" && fail "AB_REF=. built a baseline: $dry"
grep -q "SY_GG_SM90_BAND=0.*build-gpu/sy_bench_train" <<< "$dry" || fail "base env: $dry"
grep -q "SY_GG_SM90_BAND=8.*build-gpu/sy_bench_train" <<< "$dry" || fail "new env: $dry"
# A config key against another: each side's --set, after AB_SET's.
dry=$(cd "$root" && SY_GPU_CHECK_DRY=1 AB_REF=. AB_SET=train.steps=5 \
  AB_BASE_SET=run.weight_grads=fp32 AB_CONFIGS=moe AB_ROUNDS=1 bash bench/ab/run.sh "$dir/dry3" 2>&1) ||
  fail "dry run with AB_BASE_SET exited $?: $dry"
grep -q "base moe.*train.steps=5.*run.weight_grads=fp32" <<< "$dry" || fail "base set: $dry"
grep "new moe" <<< "$dry" | grep -q "weight_grads" && fail "new side got the base's set: $dry"
echo "ab_report: all checks passed"
