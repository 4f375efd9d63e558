#!/usr/bin/env bash
# A change against its baseline, measured in one call on one machine: the working tree ("new")
# and a baseline source tree ("base": a git ref, exported) are built side by side, then
# sy_bench_train runs on each config, base and new alternating, for a few rounds. The report
# gives each side's step time per round, tokens/s and peak memory, and whether the two sides'
# losses and gradient norms are equal, every step's to the bit (a change meant to be bitwise
# neutral must show "equal").
#   bash bench/ab/run.sh OUTDIR
# Environment (all optional):
#   AB_REF=HEAD            the baseline: a git ref of this repository, exported with git archive;
#                          "." = the working tree's own build on both sides (then only the
#                          sides' environments differ)
#   AB_SRC=DIR             or a source folder to build as the baseline (no git needed)
#   AB_BASE_ENV, AB_NEW_ENV="K=V ..."     environment of each side's runs (a setting against
#                          another: AB_REF=. AB_BASE_ENV=SY_GG_SM90_BAND=0 AB_NEW_ENV=SY_GG_SM90_BAND=8)
#   AB_CONFIGS="moe dense" configs/bench/NAME.yaml, or paths to config files
#   AB_SET="k=v ..."       --set overrides for both sides (e.g. run.backend=cpu for a CPU run)
#   AB_BASE_SET, AB_NEW_SET="k=v ..."     --set overrides of one side, after AB_SET's (a config
#                          key against another: AB_REF=. AB_BASE_SET=run.weight_grads=fp32)
#   AB_ROUNDS=2 AB_STEPS=10 AB_WARMUP=5   rounds of base-then-new; timed and untimed steps a run
#                          (5: the fused AdamW pass tunes its shape in the first five steps)
#   AB_CMAKE="-DSY_CUDA=ON"               configure arguments of both builds
#   AB_BUILD=build-gpu     the working tree's build folder (configured when new); the baseline
#                          builds in OUTDIR/base-build
#   AB_MEMBOUND=0          1: memory_bound_bench on both sides too, alternating (GPU builds)
#   AB_EQUAL=0             1: losses or gradient norms that differ make the exit status 1
#   BUDGET_S               no run starts after this many seconds
# OUTDIR gets build.log, base-build.log, <config>.log (every run, both sides), membound.log,
# summary.txt and ab.md (the report). Exit status 0 when everything ran (and, with AB_EQUAL=1,
# the losses and norms were equal).
set -uo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/../../launch/lib.sh"
out=${1:?usage: bash bench/ab/run.sh OUTDIR}
sy_init "$out" "${BUDGET_S:-}"
out=$sy_out
build=${AB_BUILD:-build-gpu}
read -r -a cmake_args <<< "${AB_CMAKE:--DSY_CUDA=ON}"
targets=(sy_bench_train)
[ "${AB_MEMBOUND:-0}" = 1 ] && targets+=(memory_bound_bench)

# The baseline's sources: a folder as given, or the ref exported (what git tracks at that ref).
base_src=${AB_SRC:-}
same_build=0
[ -z "$base_src" ] && [ "${AB_REF:-HEAD}" = . ] && same_build=1
if [ "$same_build" = 1 ]; then
  base_src=.
elif [ -z "$base_src" ]; then
  base_src="$out/base-src"
  ref=${AB_REF:-HEAD}
  git rev-parse --verify --quiet "$ref^{commit}" > /dev/null || {
    echo "bench/ab/run.sh: AB_REF '$ref' is not a commit of this repository (a copy without" \
         "its history? export the baseline where it exists, git archive REF | tar -x -C DIR," \
         "and pass AB_SRC=DIR)" >&2
    exit 2
  }
  sy_do rm -rf "$base_src"
  sy_do mkdir -p "$base_src"
  sy_step -l build "export $ref" bash -c "git archive '$ref' | tar -x -C '$base_src'" || exit 1
elif [ ! -f "$base_src/CMakeLists.txt" ]; then
  echo "bench/ab/run.sh: AB_SRC '$base_src' has no CMakeLists.txt" >&2
  exit 2
fi
base_src=$(cd "$base_src" 2> /dev/null && pwd || echo "$base_src")
base_build="$out/base-build"
[ "$same_build" = 1 ] && base_build=$build

# Both builds at once, half the cores each.
jobs=$(( ($(nproc 2>/dev/null || echo 8) + 1) / 2 ))
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
build_tree() {  # build_tree LOG NAME SOURCE BUILD
  local configure="cmake -S '$3' -B '$4' ${generator[*]} -DCMAKE_BUILD_TYPE=Release ${cmake_args[*]}"
  sy_step -l "$1" "$2" bash -c "$configure > /dev/null && cmake --build '$4' -j $jobs \
--target ${targets[*]}"
}
if sy_dry || [ "$same_build" = 1 ]; then
  build_tree build "build new" . "$build" || exit 1
  [ "$same_build" = 1 ] || build_tree base-build "build base" "$base_src" "$base_build"
else
  build_tree build "build new" . "$build" & new_pid=$!
  build_tree base-build "build base" "$base_src" "$base_build" & base_pid=$!
  # (The builds ran in subshells: their rows of the steps table are added here.)
  wait "$new_pid"; new_rc=$?
  wait "$base_pid"; base_rc=$?
  for side in new base; do
    rc=$new_rc log=build
    [ $side = base ] && rc=$base_rc log=base-build
    sy_steps+=("$(printf '%-30s rc %-4s' "build $side" "$rc")")
    [ "$rc" -eq 0 ] || { echo "build failed: $out/$log.log"; tail -n 20 "$out/$log.log"; exit 1; }
  done
fi

sets=""
for kv in ${AB_SET:-}; do sets+=" --set $(sy_quote "$kv")"; done
# side_sets SIDE: AB_SET's overrides, then the side's own.
side_sets() {
  local own=${AB_NEW_SET:-} text=$sets
  [ "$1" = base ] && own=${AB_BASE_SET:-}
  for kv in $own; do text+=" --set $(sy_quote "$kv")"; done
  echo "$text"
}
# side_binary SIDE NAME: the command that starts NAME on SIDE, its environment first.
side_binary() {
  local dir=$build settings=${AB_NEW_ENV:-}
  [ "$1" = base ] && dir=$base_build settings=${AB_BASE_ENV:-}
  local prefix=""
  [ -n "$settings" ] && prefix="env $settings "
  echo "$prefix'$dir/$2'"
}
config_path() { [ -f "$1" ] && echo "$1" || echo "configs/bench/$1.yaml"; }
label() { basename "${1%.yaml}"; }
for name in ${AB_CONFIGS:-moe dense}; do
  config=$(config_path "$name")
  [ -f "$config" ] || { sy_fail "no config '$name' ($config)"; continue; }
  for round in $(seq 1 "${AB_ROUNDS:-2}"); do
    for side in base new; do
      # The JSON line goes to the log with a prefix the report reads back: side and round.
      bench_run="$(side_binary "$side" sy_bench_train) '$config'$(side_sets "$side") --steps $((${AB_STEPS:-10} + ${AB_WARMUP:-5}))"
      bench_run+=" --warmup ${AB_WARMUP:-5}"
      sy_step -l "$(label "$config")" "$side $(label "$config") round $round" bash -c \
        "set -o pipefail; $bench_run | sed 's/^{\"config\"/AB $side $round {\"config\"/'"
    done
  done
done
if [ "${AB_MEMBOUND:-0}" = 1 ]; then
  for round in 1 2; do
    for side in base new; do
      membound_run="$(side_binary "$side" memory_bound_bench) --iters 50"
      sy_step -l membound "$side memory_bound_bench round $round" bash -c \
        "set -o pipefail; $membound_run | sed 's/^  /AB $side $round /'"
    done
  done
fi

report=(python3 bench/ab/report.py "$out")
[ "${AB_EQUAL:-0}" = 1 ] && report+=(--require-equal)
if sy_dry; then
  sy_do "${report[@]}"
else
  "${report[@]}" || sy_failed=1
fi
sy_table
exit "$sy_failed"
