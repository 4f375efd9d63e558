#!/usr/bin/env bash
# bash bench/fuzz/run.sh SECONDS [BUILD_DIR] [TARGET...]: runs each libFuzzer target for SECONDS,
# one after another, from a seed corpus the targets write themselves (SY_FUZZ_WRITE_SEED: the
# default config and a tiny MoE config; three token files; a checkpoint of the fuzzer's tiny
# model; two safetensors files; four config.json files beside a tiny Llama's weights; a
# tokenizer.json and a text; JSON lines, plain and compressed; Parquet files). Prints libFuzzer's coverage (cov: edges, ft: features) and the
# crashes found, last as a table. Work files under ${OUT:-bench/fuzz/out}; crashing inputs as <out>/crashes/<target>-*.
# BUILD_DIR (default build-fuzz) is configured with
#   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DSY_FUZZ=ON -DSY_CUDA=OFF
# and built with: cmake --build build-fuzz --target fuzz_config fuzz_token_file fuzz_checkpoint \
#   fuzz_safetensors fuzz_hf_config fuzz_hf_tokenizer fuzz_prepare_text fuzz_parquet
# The inputs kept under tests/data/fuzz/<reader>/ seed each run too. One worker (-fork=1) that
# goes on past a finding (-ignore_crashes/ooms/timeouts), so a long run reports all it finds.
# RSS_MB (default 2048) is the memory limit per input.
set -euo pipefail
seconds=${1:?usage: run.sh SECONDS [BUILD_DIR] [TARGET...]}
build=${2:-build-fuzz}
shift $(( $# >= 2 ? 2 : 1 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] ||
  targets=(fuzz_config fuzz_token_file fuzz_checkpoint fuzz_safetensors fuzz_hf_config
           fuzz_hf_tokenizer fuzz_prepare_text fuzz_parquet)
out=${OUT:-bench/fuzz/out}
mkdir -p "$out/crashes"
# HDF5's error paths keep a few handles for the process's life: leaks are not what we look for.
# A huge malloc returns NULL, as it does in a normal build, instead of ending the run:
# the readers must cope with that (HDF5 does, with an error).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:allocator_may_return_null=1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
table=()
for target in "${targets[@]}"; do
  binary="$build/fuzz/$target"
  [ -x "$binary" ] || { echo "missing $binary (see the header of this script)"; exit 1; }
  seeds="$out/seeds/$target" corpus="$out/corpus/$target" kept="tests/data/fuzz/${target#fuzz_}"
  rm -rf "$seeds" && mkdir -p "$seeds" "$corpus"
  SY_FUZZ_WRITE_SEED="$seeds" "$binary" -runs=0 "$corpus" > "$out/$target.seed.log" 2>&1
  rm -f "$seeds/latest"
  [ -d "$kept" ] && find "$kept" -type f -exec cp {} "$seeds/" \;
  echo "== $target: $(find "$seeds" -maxdepth 1 -type f | wc -l) seeds, ${seconds}s"
  set +e
  "$binary" -max_total_time="$seconds" -timeout=20 -rss_limit_mb="${RSS_MB:-2048}" -print_final_stats=1 \
    -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -artifact_prefix="$out/crashes/$target-" "$corpus" "$seeds" > "$out/$target.log" 2>&1
  status=$?
  set -e
  last=$(grep -E '^#[0-9]+' "$out/$target.log" | tail -1)
  runs=$(echo "$last" | sed -E 's/^#([0-9]+).*/\1/')
  cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | cut -d' ' -f2)
  ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | cut -d' ' -f2)
  crashes=$(find "$out/crashes" -maxdepth 1 -name "$target-*" | wc -l)
  echo "$last"
  [ $status -eq 0 ] || grep -E 'ERROR|SUMMARY|==[0-9]+==|deadly|Test unit written' "$out/$target.log" | head -8
  table+=("$(printf '%-16s %6ss %10s %6s %7s %7s %4s' "$target" "$seconds" "$runs" "${cov:-?}" "${ft:-?}" "$crashes" "$status")")
done
echo
printf '%-16s %7s %10s %6s %7s %7s %4s\n' target time runs cov ft crashes exit
for row in "${table[@]}"; do echo "$row"; done
