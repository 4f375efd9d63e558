#!/usr/bin/env bash
# The CLI's error contract, end to end: bad input gets one line naming the file, key or rank and
# a non-zero exit, also under mpirun (reported once, no hang). Usage: cli_errors.sh SWITCHYARD
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
# expect_help PATTERN... -- COMMAND...: exit status 0, nothing on stderr, and every PATTERN (a
# fixed string) in stdout.
expect_help() {
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  timeout 60 "$@" >stdout.txt 2>stderr.txt
  local got=$? missing=() pattern
  for pattern in "${patterns[@]}"; do
    grep -q -F -- "$pattern" stdout.txt || missing+=("$pattern")
  done
  if [ "$got" -eq 0 ] && [ ! -s stderr.txt ] && ((${#missing[@]} == 0)); then
    ok "$*"
  else
    fail "$* -> status $got (want 0), missing from stdout: ${missing[*]}"
  fi
}

mkdir -p text && for i in $(seq 1 300); do echo "line $i: the experts route tokens, and tokens find experts." ; done > text/a.txt
"$switchyard" prepare-data --input text --format text --output tokens.h5 >/dev/null || { echo "FAIL: prepare-data"; exit 1; }
cat > tiny.yaml <<'YAML'
model: {vocab_size: 256, seq_len: 16, d_model: 16, n_layers: 2, n_heads: 2, ffn_hidden: 32}
moe: {num_experts: 4, top_k: 2, expert_hidden: 16}
train: {micro_batch_size: 2, steps: 3, warmup_steps: 1}
data: {path: tokens.h5}
eval: {every: 0, batches: 1}
run: {dir: run, log_every: 1}
YAML
printf 'model:\n  d_model: 30\n  n_heads: 4\n  bogus: 1\n' > bad.yaml

expect 0 "tiny.yaml: ok" "$switchyard" check-config tiny.yaml
expect 1 "bad.yaml: model.bogus: unknown key" "$switchyard" check-config bad.yaml
expect 1 "tiny.yaml: moe.top_k: 9 exceeds moe.num_experts (4)" "$switchyard" check-config tiny.yaml --set moe.top_k=9
expect 1 "tiny.yaml: train.lr: must be > 0" "$switchyard" train tiny.yaml --set train.lr=-1
expect 1 "missing.h5" "$switchyard" train tiny.yaml --set data.path=missing.h5
expect 1 "no-such.yaml" "$switchyard" train no-such.yaml
expect 2 "unknown command" "$switchyard" fly tiny.yaml
expect 1 "validation" "$switchyard" eval tiny.yaml --batches 100000
expect_ok "" "$switchyard" train tiny.yaml
checkpoint=run/checkpoints/step_00000003.h5
expect_ok "" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt "line 1" --tokens 5
expect 2 "generate: needs --prompt TEXT (or --prompt-ids IDS)" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint"
expect 1 "temperature: must be a finite number" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt x --temperature -1
expect 1 "missing.h5" "$switchyard" generate tiny.yaml --checkpoint missing.h5 --prompt x
expect 2 "score: score needs --input" "$switchyard" score tiny.yaml --checkpoint "$checkpoint"
expect 1 "questions.jsonl: cannot open for reading" "$switchyard" score tiny.yaml --checkpoint "$checkpoint" --input questions.jsonl
expect 2 "--limit: expected a non-negative integer, got '-2'" "$switchyard" score tiny.yaml --checkpoint "$checkpoint" --input x --limit -2
# Under mpirun: reported once, by rank 0, and the job ends.
expect 1 "parallel.expert_parallel: 4 does not divide the number of ranks (2)" "${mpi2[@]}" "$switchyard" train tiny.yaml --set parallel.expert_parallel=4
expect 1 "moe.num_experts" "${mpi2[@]}" "$switchyard" train tiny.yaml --set moe.num_experts=3 --set parallel.expert_parallel=2
expect 1 "missing.h5" "${mpi2[@]}" "$switchyard" train tiny.yaml --set data.path=missing.h5 --set run.dir=run_mpi
expect_ok "" "${mpi2[@]}" "$switchyard" train tiny.yaml --set parallel.expert_parallel=2 --set run.dir=run_mpi

# ---- help and version: every command lists its options with their defaults --------------------
commands=(prepare-data train eval generate score inspect plot check-config)
declare -A options=(
  [prepare-data]="--input --format --output --tokenizer =corpora/brown.h5 =brown =bytes"
  [train]="CONFIG --resume --set"
  [eval]="CONFIG --checkpoint --batches --set"
  [generate]="CONFIG --checkpoint --prompt --prompt-ids --chat --chat-template --system --tokens --temperature --top-k --top-p --seed --set =200 =0.8"
  [score]="CONFIG --checkpoint --input --context-field --choices-field --answer-field --delimiter --limit --output --set =context =answer"
  [inspect]="CHECKPOINT"
  [plot]="RUN_DIR --output"
  [check-config]="CONFIG --set"
)
for command in "${commands[@]}"; do
  for flag in --help -h; do
    # shellcheck disable=SC2086  # the option names are words
    expect_help "Usage: switchyard $command" ${options[$command]} -- "$switchyard" "$command" $flag
  done
  expect_help "switchyard " "(git " "CUDA: " "NCCL: " "cuDNN: " -- "$switchyard" "$command" --version
done
for flag in --help -h help; do
  expect_help "Usage: switchyard" "${commands[@]}" "--version" -- "$switchyard" $flag
done
expect_help "Usage: switchyard generate" "--prompt" -- "$switchyard" help generate
expect_help "switchyard " "(git " "MPI: " "HDF5: " "CUDA: " "NCCL: " "cuDNN: " -- "$switchyard" --version
# A command line that does not parse: exit status 2, one line naming the option.
expect 2 "switchyard train: unknown option --bogus" "$switchyard" train tiny.yaml --bogus 1
expect 2 "switchyard: unknown option --bogus" "$switchyard" --bogus
expect 2 "unexpected argument 'other.yaml'" "$switchyard" check-config tiny.yaml other.yaml
expect 2 "train needs CONFIG" "$switchyard" train
expect 2 "--tokens: expected a non-negative integer, got '-1'" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt x --tokens -1
expect 2 "--temperature: expected a number, got 'warm'" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt x --temperature warm
expect 1 "--top-p: must be in (0, 1]" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt x --top-p 1.5
expect_ok "" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt "line 1" --tokens 5 --top-k 4 --top-p 0.9
expect 2 "--batches needs a value" "$switchyard" eval tiny.yaml --batches
expect 2 "--format: html not in {brown,text,jsonl,sft,parquet,nanogpt,megatron}" "$switchyard" prepare-data --format html
expect 2 "--chat-template: jinja not in {chatml,llama3,plain}" "$switchyard" prepare-data --format sft --chat-template jinja
expect 2 "--prompt-field: an empty name in \"instruction,\"" "$switchyard" prepare-data --format sft --prompt-field instruction,
expect 2 "--system needs --chat-template" "$switchyard" prepare-data --format sft --system "Be brief."
expect 2 "--system-field needs --chat-template" "$switchyard" prepare-data --format sft --system-field system_prompt
expect 2 "generate: --chat-template needs --chat" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt x --chat-template plain
expect 2 "generate: --system needs --chat" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --prompt x --system y
expect 2 "--chat requires --prompt" "$switchyard" generate tiny.yaml --checkpoint "$checkpoint" --chat --prompt-ids 1
expect 2 "plot: several runs need --output DIR" "$switchyard" plot run_a run_b
# A compressed input cut short (gzip is on every Debian machine): refused, and no token file.
for i in 1 2 3; do echo "{\"text\": \"document $i\"}"; done | gzip -c | head -c 30 > cut.jsonl.gz
expect 1 "cut.jsonl.gz: gzip data ends early" "$switchyard" prepare-data --format jsonl --input cut.jsonl.gz --output cut.h5
if [ -e cut.h5 ]; then fail "cut.h5 written from a cut input"; else ok "no token file from a cut input"; fi
printf '{"text": "one"}\n{"body": "two"}\n' > nofield.jsonl
# --format parquet of a file that is not Parquet: refused by name, no token file.
expect 1 "nofield.jsonl: not a Parquet file" "$switchyard" prepare-data --format parquet --input nofield.jsonl --output pq.h5
if [ -e pq.h5 ]; then fail "pq.h5 written from a text file"; else ok "no token file from a file that is not Parquet"; fi
# tokenizer train --format jsonl: a line without the field is named; no model is written.
expect 1 "nofield.jsonl: line 2: no field \"text\"" "$switchyard" tokenizer train --format jsonl --input nofield.jsonl --output nofield.model
if [ -e nofield.model ]; then fail "nofield.model written"; else ok "no model from a bad jsonl line"; fi
expect 1 "--sample-lines 50: 0 (every line) or more than 100" "$switchyard" tokenizer train --input nofield.jsonl --sample-lines 50
expect 2 "unknown option --bogus" "${mpi2[@]}" "$switchyard" train tiny.yaml --bogus

finish
