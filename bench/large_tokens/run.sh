#!/usr/bin/env bash
# Training from a token file larger than the memory the process may use (issue 13,
# docs/data.md "Token files larger than memory"): writes a synthetic byte-level token file of
# LARGE_TOKENS_GB (default 10) GB of tokens and a small one of SMALL_TOKENS_MB (default 64) MB,
# then trains CONFIG (default configs/tiny.yaml) for STEPS (default 10000) steps on each under a
# 2 GiB memory limit, REPEATS (default 5) times alternating, sampling VmRSS/VmHWM from /proc
# every 0.2 s, and prints a table: the best tokens/s of each file (the machine is shared, so
# the best run is the one least disturbed) and the memory of its last run.
#
# Usage: bash bench/large_tokens/run.sh [BUILD] OUT
#   BUILD: a build folder with switchyard and sy_make_token_file (default build)
#   OUT:   where the token files, runs and logs go (needs LARGE_TOKENS_GB + 1 GB of disk)
# The memory limit is systemd-run --scope -p MemoryMax=2G where systemd runs, else
# prlimit --as=2GiB (address space, a stricter limit: it also counts what is mapped but never
# touched); the table says which. KEEP_FILES=1 keeps the token files for another run.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $# -eq 1 ]]; then build=build; out=$1; else build=${1:-build}; out=${2:?usage: run.sh [BUILD] OUT}; fi
large_gb=${LARGE_TOKENS_GB:-10}
small_mb=${SMALL_TOKENS_MB:-64}
steps=${STEPS:-10000}
config=${CONFIG:-configs/tiny.yaml}
repeats=${REPEATS:-5}
limit_bytes=$((2 * 1024 * 1024 * 1024))
mkdir -p "$out"
for tool in switchyard sy_make_token_file; do
  [[ -x "$build/$tool" ]] || { echo "no $build/$tool: cmake --build $build --target $tool" >&2; exit 1; }
done

if systemd-run --scope -p MemoryMax=2G --quiet true >/dev/null 2>&1; then
  limit=(systemd-run --scope -p MemoryMax=2G --quiet)
  limit_name="systemd-run --scope -p MemoryMax=2G"
else
  limit=(prlimit --as=$limit_bytes)
  limit_name="prlimit --as=2GiB (no systemd here)"
fi

large=$out/large.h5 small=$out/small.h5
large_tokens=$((large_gb * 1000000000)) small_tokens=$((small_mb * 1000000))
if [[ ! -f $large ]] || [[ $(stat -c %s "$large") -lt $large_tokens ]]; then
  start=$(date +%s)
  "$build/sy_make_token_file" "$large" "$large_tokens"
  echo "wrote $large ($large_tokens train tokens) in $(( $(date +%s) - start )) s" >"$out/generate.log"
fi
[[ -f $small ]] || "$build/sy_make_token_file" "$small" "$small_tokens"

# run NAME FILE: trains under the limit; samples the process's VmRSS and VmHWM (kB) while it runs.
run() {
  local name=$1 file=$2
  rm -rf "$out/run_$name"
  "${limit[@]}" "$build/switchyard" train "$config" --set data.path="$file" \
    --set train.steps="$steps" --set run.dir="$out/run_$name" --set run.log_every=50 \
    --set checkpoint.every=0 >"$out/$name.log" 2>&1 &
  local pid=$! sample=0
  : >"$out/$name.memory"
  while kill -0 "$pid" 2>/dev/null; do
    # The first process that is switchyard: prlimit and systemd-run --scope exec it in place.
    awk -v t="$sample" '/^VmRSS|^VmHWM/ {v[$1]=$2} END {if (v["VmRSS:"]) print t, v["VmRSS:"], v["VmHWM:"]}' \
      "/proc/$pid/status" >>"$out/$name.memory" 2>/dev/null || true
    sample=$((sample + 1))
    sleep 0.2
  done
  wait "$pid" || { echo "training on $file failed: see $out/$name.log" >&2; tail -5 "$out/$name.log" >&2; exit 1; }
}

# Page cache from the generation would flatter the large run: drop what we can (root only).
sync; (echo 1 >/proc/sys/vm/drop_caches) 2>/dev/null || true
rate() { grep -o "([0-9.]* tokens/s)" "$1" | tr -d '(' | cut -d' ' -f1; }
large_rates=() small_rates=()
for ((r = 0; r < repeats; r++)); do
  run large "$large"; large_rates+=("$(rate "$out/large.log")")
  run small "$small"; small_rates+=("$(rate "$out/small.log")")
done
best() { printf "%s\n" "$@" | sort -g | tail -1; }
median() { printf "%s\n" "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
# RSS after the first 20% of the samples (start-up done), its maximum, the last, and VmHWM, MiB.
memory() {
  awk '{r[NR]=$2; h=$3} END {s=int(NR/5)+1; m=0; for (i=s;i<=NR;i++) if (r[i]>m) m=r[i];
       printf "%8.0f %8.0f %8.0f %8.0f", r[s]/1024, m/1024, r[NR]/1024, h/1024}' "$1"
}
large_rate=$(best "${large_rates[@]}") small_rate=$(best "${small_rates[@]}")
{
  [[ -f $out/generate.log ]] && cat "$out/generate.log"
  echo "large token files: $config, $steps steps, limit $limit_name, $(nproc) cores, $(date -u +%F)"
  printf "%-28s %10s %10s %8s %8s %8s %8s\n" "token file" "size" "tokens/s" "RSS@20%" "RSSmax" "RSSend" "VmHWM"
  printf "%-28s %9.2fG %10s %s\n" "large ($large_gb GB of tokens)" \
    "$(echo "$(stat -c %s "$large") / 1073741824" | bc -l)" "$large_rate" "$(memory "$out/large.memory")"
  printf "%-28s %9.2fG %10s %s\n" "small ($small_mb MB of tokens)" \
    "$(echo "$(stat -c %s "$small") / 1073741824" | bc -l)" "$small_rate" "$(memory "$out/small.memory")"
  echo "large / small tokens/s (best of $repeats): $(echo "$large_rate / $small_rate" | bc -l | cut -c1-6)   (RSS in MiB)"
  echo "large / small tokens/s (medians $(median "${large_rates[@]}") / $(median "${small_rates[@]}")): $(echo "$(median "${large_rates[@]}") / $(median "${small_rates[@]}")" | bc -l | cut -c1-6)"
  echo "every run, tokens/s: large ${large_rates[*]}; small ${small_rates[*]}"
} | tee "$out/table.txt"
[[ ${KEEP_FILES:-0} == 1 ]] || rm -f "$large" "$small"
