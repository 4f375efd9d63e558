#!/usr/bin/env bash
# generate with and without the key/value cache (docs/model.md, Generation): trains CONFIG
# (default configs/example.yaml) for 20 steps at model.seq_len SEQ_LEN (default 2048) on a
# synthetic byte-level token file, then times `generate --temperature 0 --tokens TOKENS`
# (default 1000) from the same checkpoint with the cache and with --no-kv-cache, REPEATS (default
# 3) times alternating, and prints the best tokens/s of each and whether their tokens are equal.
# With the cache each token is a forward of that token alone; without it, of the whole text so far.
#
# Usage: bash bench/generate/run.sh [BUILD] OUT
#   BUILD: a build folder with switchyard and sy_make_token_file (default build)
#   EXTRA="--set run.backend=cuda --set run.precision=bf16": more options for train and generate
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $# -eq 1 ]]; then build=build; out=$1; else build=${1:-build}; out=${2:?usage: run.sh [BUILD] OUT}; fi
config=${CONFIG:-configs/example.yaml}
seq_len=${SEQ_LEN:-2048}
tokens=${TOKENS:-1000}
repeats=${REPEATS:-3}
read -r -a extra <<<"${EXTRA:-}"
for tool in switchyard sy_make_token_file; do
  [[ -x "$build/$tool" ]] || { echo "no $build/$tool: cmake --build $build --target $tool" >&2; exit 1; }
done
mkdir -p "$out"
[[ -f $out/tokens.h5 ]] || "$build/sy_make_token_file" "$out/tokens.h5" 4000000 200000 >/dev/null
rm -rf "$out/run"
"$build/switchyard" train "$config" --set data.path="$out/tokens.h5" --set model.seq_len="$seq_len" \
  --set train.micro_batch_size=2 --set train.steps=20 --set eval.tokens="$seq_len" \
  --set run.dir="$out/run" "${extra[@]}" >"$out/train.log" 2>&1

# The ids of "The jury said": --prompt-ids never stops early (no end-of-sequence token), so
# every run generates TOKENS tokens.
prompt="84 104 101 32 106 117 114 121 32 115 97 105 100"
# run NAME [FLAGS]: one generate; its seconds to $out/NAME.seconds, its ids to $out/NAME.txt.
run() {
  local name=$1
  shift
  local start end
  start=$(date +%s.%N)
  "$build/switchyard" generate --checkpoint "$out/run" --prompt-ids "$prompt" --tokens "$tokens" \
    --temperature 0 "${extra[@]}" "$@" >"$out/$name.txt"
  end=$(date +%s.%N)
  echo "$end - $start" | bc >>"$out/$name.seconds"
}
rm -f "$out"/*.seconds
for ((i = 0; i < repeats; ++i)); do
  run cache
  run no_cache --no-kv-cache
done

best() { sort -g "$out/$1.seconds" | head -1; }
generated=$(($(wc -w <"$out/cache.txt") - $(wc -w <<<"$prompt")))
equal=no
cmp -s "$out/cache.txt" "$out/no_cache.txt" && equal=yes
{
  echo "generate: $config at seq_len $seq_len, greedy, a 13-token prompt, $generated tokens" \
    "generated, best of $repeats; $(nproc) cores; $(date -u +%F)"
  echo "| | seconds (whole command) | tokens/s |"
  echo "|---|---|---|"
  for name in cache no_cache; do
    printf "| %s | %.2f | %.0f |\n" "$name" "$(best $name)" "$(echo "$generated / $(best $name)" | bc -l)"
  done
  echo "speed-up: $(echo "$(best no_cache) / $(best cache)" | bc -l | xargs printf '%.1f')x;" \
    "tokens equal: $equal"
} | tee "$out/summary.md"
