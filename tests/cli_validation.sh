#!/usr/bin/env bash
# The validation set end to end through the CLI (docs/config.md, eval): train a small MoE with
# capacity drops at micro-batch 4 on one rank, then `eval` its checkpoint at micro-batch 3 and 1
# and under mpirun -np 2: every printed val_loss must equal the last one in metrics.jsonl
# character for character. With the experts split over the 2 ranks (an expert's GEMM then sees
# the rows of 2 sequences at once) it must agree to 1e-6 relative. A dropless run exported to a
# transformers folder and imported back evaluates and generates the same, and a run from it trains
# as a run from the original, also for a Qwen3-MoE on 2 ranks. Prints a table last.
# Usage: cli_validation.sh SWITCHYARD [cpu|cuda] [LOG_DIR]
set -uo pipefail
switchyard=$(realpath "$1")
backend=${2:-cpu}
logs=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -n "$logs" ] && mkdir -p "$logs" && logs=$(realpath "$logs")
cd "$work" || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
mpi2=(mpirun -np 2 --oversubscribe --bind-to none)
precision=fp32
[ "$backend" = cuda ] && precision=bf16

for i in $(seq 1 400); do echo "line $i: the router sends each token to two of four experts."; done >corpus.txt
"$switchyard" prepare-data --input corpus.txt --format text --output tokens.h5 >prepare.log 2>&1 ||
  { echo "FAIL: prepare-data"; cat prepare.log; exit 1; }
cat >small.yaml <<YAML
model: {vocab_size: 256, seq_len: 32, d_model: 64, n_layers: 2, n_heads: 2, ffn_hidden: 128}
moe: {num_experts: 4, top_k: 2, expert_hidden: 32, capacity_factor: 1.0}
train: {micro_batch_size: 4, steps: 12, warmup_steps: 2}
data: {path: tokens.h5}
eval: {every: 6, tokens: 1000}
run: {dir: run, log_every: 6, backend: $backend, precision: $precision}
YAML

failures=0
rows=()
save_log() { [ -n "$logs" ] && cp "$1" "$logs/$2"; }
# same_losses ROW RUN_A RUN_B: a table row, "equal" when the two runs' metrics.jsonl hold the same
# losses, step for step, character for character.
same_losses() {
  local a b
  a=$(grep -o '"loss": [^,]*' "$2/metrics.jsonl")
  b=$(grep -o '"loss": [^,]*' "$3/metrics.jsonl")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then verdict=equal; else
    verdict=DIFFERS; failures=$((failures + 1)); fi
  rows+=("$1|$(echo "$b" | tail -1 | cut -d' ' -f2)|$verdict|-")
}

"$switchyard" train small.yaml >train.log 2>&1
status=$?
save_log train.log train.log
save_log run/metrics.jsonl metrics.jsonl
if [ $status -ne 0 ]; then
  echo "FAIL: train exited $status"; tail -5 train.log; exit 1
fi
logged=$(grep '"val_loss"' run/metrics.jsonl | tail -1 | grep -o '"val_loss": [^,}]*' | cut -d' ' -f2)
bpb=$(grep '"val_loss"' run/metrics.jsonl | tail -1 | grep -o '"val_bits_per_byte": [^,}]*' | cut -d' ' -f2)
tokens=$(grep '"val_loss"' run/metrics.jsonl | tail -1 | grep -o '"val_tokens": [^,}]*' | cut -d' ' -f2)
rows+=("train (1 rank, micro-batch 4)|$logged|logged|-")
if [ -z "$logged" ] || [ -z "$bpb" ] || [ "$tokens" != 992 ]; then
  echo "FAIL: metrics.jsonl eval line lacks val_loss, val_bits_per_byte or val_tokens 992"
  grep '"val_loss"' run/metrics.jsonl | tail -1
  failures=$((failures + 1))
fi

# check NAME TOLERANCE COMMAND...: eval prints the logged val_loss (TOLERANCE 0: the same text;
# else within that relative difference).
check() {
  local name=$1 tolerance=$2
  shift 2
  local start end seconds got verdict
  start=$(date +%s.%N)
  "$@" >eval.out 2>eval.err
  local status=$?
  end=$(date +%s.%N)
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  save_log eval.out "eval_${name// /_}.out"
  save_log eval.err "eval_${name// /_}.err"
  got=$(grep -o '"val_loss": [^,}]*' eval.out | cut -d' ' -f2)
  if [ $status -eq 0 ] && [ "$got" = "$logged" ]; then
    verdict=equal
  elif [ $status -eq 0 ] && [ "$tolerance" != 0 ] && [ -n "$got" ] &&
       awk -v a="$got" -v b="$logged" -v t="$tolerance" 'BEGIN { d = (a - b) / b; exit !(d <= t && -d <= t) }'; then
    verdict="within $tolerance"
  else
    verdict="DIFFERS (status $status)"
    failures=$((failures + 1))
    sed 's/^/  | /' eval.err | tail -5
  fi
  rows+=("$name|$got|$verdict|$seconds")
}
checkpoint=run/checkpoints/step_00000012.h5
check "eval, micro-batch 3" 0 "$switchyard" eval small.yaml --checkpoint $checkpoint --set train.micro_batch_size=3
check "eval, micro-batch 1" 0 "$switchyard" eval small.yaml --checkpoint run/checkpoints --set train.micro_batch_size=1
check "eval, 2 ranks, mb 2" 0 "${mpi2[@]}" "$switchyard" eval small.yaml --checkpoint $checkpoint \
  --set train.micro_batch_size=2
check "eval, 2 ranks, P=2, mb 2" 1e-6 "${mpi2[@]}" "$switchyard" eval small.yaml --checkpoint $checkpoint \
  --set parallel.expert_parallel=2 --set train.micro_batch_size=2
check "eval --tokens 992" 0 "$switchyard" eval small.yaml --checkpoint $checkpoint --tokens 992

# A mixture (data.train_paths): the other file's val_loss/<name>, logged and printed by eval
# from the checkpoint alone, under another micro-batch and on 2 ranks: the same text.
for i in $(seq 1 300); do echo "step $i: all-to-all sends rows to the ranks that hold their experts."; done >corpus2.txt
"$switchyard" prepare-data --input corpus2.txt --format text --output tokens2.h5 >prepare2.log 2>&1 ||
  { echo "FAIL: prepare-data (second corpus)"; cat prepare2.log; exit 1; }
"$switchyard" train small.yaml --set 'data.train_paths=[tokens.h5, tokens2.h5]' \
  --set 'data.train_weights=[1, 3]' --set run.dir=mix >mix.log 2>&1 ||
  { echo "FAIL: train on a mixture"; tail -5 mix.log; failures=$((failures + 1)); }
mix_logged=$(grep '"val_loss/tokens2"' mix/metrics.jsonl | tail -1 | grep -o '"val_loss/tokens2": [^,}]*' | cut -d' ' -f2)
for side in one two; do
  if [ $side = one ]; then
    "$switchyard" eval --checkpoint mix/checkpoints --set train.micro_batch_size=3 >mix_eval.out 2>mix_eval.err
  else
    "${mpi2[@]}" "$switchyard" eval --checkpoint mix/checkpoints --set train.micro_batch_size=2 >mix_eval.out 2>mix_eval.err
  fi
  got=$(grep -o '"val_loss/tokens2": [^,}]*' mix_eval.out | cut -d' ' -f2)
  if [ -n "$mix_logged" ] && [ "$got" = "$mix_logged" ]; then verdict=equal; else
    verdict=DIFFERS; failures=$((failures + 1)); tail -3 mix_eval.err; fi
  rows+=("mixture val_loss/tokens2, $side|$got|$verdict|-")
done

# export then import (docs/export.md): a dropless run's transformers folder read back into a
# checkpoint gives eval's val_loss and generate's greedy text character for character, and its
# own export the same files.
"$switchyard" train small.yaml --set moe.capacity_factor=0 --set train.steps=4 --set run.dir=hf \
  >hf_train.log 2>&1 || { echo "FAIL: train for export"; tail -5 hf_train.log; exit 1; }
"$switchyard" export hf/checkpoints --dtype fp32 --output hf_folder >hf_export.log 2>&1 &&
  "$switchyard" import hf_folder --output imported.h5 >hf_import.log 2>&1 &&
  "$switchyard" inspect imported.h5 >hf_inspect.log 2>&1 ||
  { echo "FAIL: export, import or inspect"; tail -3 hf_export.log hf_import.log hf_inspect.log; exit 1; }
for source in hf/checkpoints imported.h5; do
  "$switchyard" eval --checkpoint $source --tokens 992 --set data.path=tokens.h5 \
    --set train.micro_batch_size=4 2>/dev/null | grep -o '"val_loss": [^,}]*' >>hf_eval.out
  "$switchyard" generate --checkpoint $source --prompt "line 7" --tokens 24 --temperature 0 \
    --set data.path=tokens.h5 2>/dev/null >>hf_generate.out
done
if [ "$(sort -u hf_eval.out | wc -l)" = 1 ] && [ "$(wc -l <hf_eval.out)" = 2 ] &&
   [ "$(sort -u hf_generate.out | wc -l)" = 1 ]; then verdict=equal; else
  verdict=DIFFERS; failures=$((failures + 1)); cat hf_eval.out hf_generate.out; fi
rows+=("import of an export|$(head -1 hf_eval.out | cut -d' ' -f2)|$verdict|-")
# --prompt-ids: the import's greedy continuation of the prompt's byte ids is the text's, as ids.
"$switchyard" generate --checkpoint imported.h5 --prompt "line 7" --tokens 24 --temperature 0 \
  --set data.path=tokens.h5 2>/dev/null >gen_text.out
"$switchyard" generate --checkpoint imported.h5 --prompt-ids "108 105 110 101 32 55" --tokens 24 \
  --temperature 0 2>/dev/null >gen_ids.out
for id in $(cat gen_ids.out); do printf "\\$(printf '%03o' "$id")"; done >gen_ids.txt
echo >>gen_ids.txt
if [ -s gen_text.out ] && cmp -s gen_text.out gen_ids.txt; then verdict=equal; else
  verdict=DIFFERS; failures=$((failures + 1)); cat gen_ids.out; fi
rows+=("generate --prompt-ids of the import|$(wc -w <gen_ids.out) ids|$verdict|-")
# An import without a tokenizer whose vocabulary is not data.path's: a text prompt is refused
# (bytes are surely not its tokenizer), naming --prompt-ids.
"$switchyard" train small.yaml --set moe.capacity_factor=0 --set train.steps=1 \
  --set model.vocab_size=300 --set run.dir=wide >wide_train.log 2>&1 &&
  "$switchyard" export wide/checkpoints --dtype fp32 --output wide_folder >/dev/null 2>&1 &&
  "$switchyard" import wide_folder --output wide.h5 >/dev/null 2>&1 ||
  { echo "FAIL: train, export or import of a 300-token vocabulary"; tail -3 wide_train.log; exit 1; }
"$switchyard" generate --checkpoint wide.h5 --prompt "line 7" --set data.path=tokens.h5 \
  >wide_generate.out 2>&1
if [ $? = 1 ] && grep -q "carries no tokenizer, and data.path's (tokens.h5, vocabulary 256) is not model.vocab_size 300: give the prompt as token ids (--prompt-ids)" wide_generate.out
then verdict=refused; else verdict=ACCEPTED; failures=$((failures + 1)); cat wide_generate.out; fi
rows+=("generate, import of another vocabulary|-|$verdict|-")
"$switchyard" export imported.h5 --dtype fp32 --output hf_again >/dev/null 2>&1 &&
  cmp -s hf_folder/model.safetensors hf_again/model.safetensors &&
  cmp -s hf_folder/config.json hf_again/config.json ||
  { echo "FAIL: export of the import differs from the export"; failures=$((failures + 1)); }
# A run from the import (checkpoint.init_from) trains as a run from the original's weights, to
# the bit: the same losses, step by step.
for source in hf/checkpoints imported.h5; do
  "$switchyard" train small.yaml --set moe.capacity_factor=0 --set train.steps=3 \
    --set "checkpoint.init_from=$source" --set "run.dir=from_$(basename $source)" \
    >from_import.log 2>&1 || { echo "FAIL: train from $source"; tail -3 from_import.log; exit 1; }
  grep -q "^initialised from " from_import.log ||
    { echo "FAIL: no 'initialised from' line"; failures=$((failures + 1)); }
done
same_losses "train from the import" from_checkpoints from_imported.h5

# The same through a Qwen3-MoE (per-head QK-norm on heads wider than D / H, grouped-query
# attention, layer 0 dense via mlp_only_layers, Llama 3.1's rotary scaling): export, import, and
# train from each on 2 ranks with the experts split over them: the same losses, step by step.
qwen=(--set model.qk_norm=per_head --set model.head_dim=48 --set model.n_kv_heads=1
      --set "moe.layers=[1]" --set model.rope_scaling=llama3 --set model.rope_factor=8
      --set model.rope_original_max_position=16 --set moe.capacity_factor=0)
"$switchyard" train small.yaml "${qwen[@]}" --set train.steps=2 --set run.dir=qwen \
  >qwen_train.log 2>&1 &&
  "$switchyard" export qwen/checkpoints --dtype fp32 --output qwen_folder >qwen_export.log 2>&1 &&
  "$switchyard" import qwen_folder --output qwen.h5 >qwen_import.log 2>&1 ||
  { echo "FAIL: train, export or import of a Qwen3-MoE"; tail -3 qwen_*.log; exit 1; }
grep -q '"Qwen3MoeForCausalLM"' qwen_folder/config.json ||
  { echo "FAIL: not exported as Qwen3MoeForCausalLM"; failures=$((failures + 1)); }
for source in qwen/checkpoints qwen.h5; do
  "${mpi2[@]}" "$switchyard" train small.yaml "${qwen[@]}" --set train.steps=3 \
    --set parallel.expert_parallel=2 --set "checkpoint.init_from=$source" \
    --set "run.dir=qwen_from_$(basename $source)" >qwen_from.log 2>&1 ||
    { echo "FAIL: train from $source on 2 ranks"; tail -3 qwen_from.log; exit 1; }
done
same_losses "Qwen3-MoE import, 2 ranks EP=2" qwen_from_checkpoints qwen_from_qwen.h5

# Too little data names what would fit.
"$switchyard" eval small.yaml --tokens 100000 >/dev/null 2>fit.err
if ! grep -q "eval.tokens 100000 needs 3125 sequences of 32 tokens; the validation split has [0-9]* tokens: at most [0-9]* sequences; set eval.tokens <= [0-9]*" fit.err; then
  echo "FAIL: too-little-data message"; cat fit.err; failures=$((failures + 1))
fi
# check-config notes what a layout change keeps.
"$switchyard" check-config small.yaml >/dev/null 2>notes.err
grep -q "^note: the routing groups are the micro-batches" notes.err ||
  { echo "FAIL: check-config note"; cat notes.err; failures=$((failures + 1)); }

echo
printf '%-30s %-22s %-12s %s\n' "backend $backend" val_loss verdict seconds
for row in "${rows[@]}"; do
  IFS='|' read -r name value verdict seconds <<<"$row"
  printf '%-30s %-22s %-12s %s\n' "$name" "$value" "$verdict" "$seconds"
done
echo "val_bits_per_byte $bpb over $tokens tokens; $failures failed"
[ "$failures" -eq 0 ]
