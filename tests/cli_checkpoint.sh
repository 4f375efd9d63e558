#!/usr/bin/env bash
# Checkpoints through the CLI, end to end: train saves and resumes (--resume PATH|auto), inspect
# and eval --checkpoint read them, and every bad checkpoint gets one line naming the file and a
# non-zero exit (also under mpirun: once, no hang). Usage: cli_checkpoint.sh SWITCHYARD TAMPER
set -uo pipefail
tamper=$(realpath "$2")
fuzz_inputs=$(realpath "$(dirname "${BASH_SOURCE[0]}")/data/fuzz")
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"

mkdir -p text && for i in $(seq 1 300); do echo "line $i: the experts route tokens, and tokens find experts." ; done > text/a.txt
"$switchyard" prepare-data --input text --format text --output tokens.h5 >/dev/null || { echo "FAIL: prepare-data"; exit 1; }
cat > tiny.yaml <<'YAML'
model: {vocab_size: 256, seq_len: 16, d_model: 16, n_layers: 2, n_heads: 2, ffn_hidden: 32}
moe: {num_experts: 4, top_k: 2, expert_hidden: 16}
train: {micro_batch_size: 2, steps: 6, warmup_steps: 1}
data: {path: tokens.h5}
eval: {every: 0, batches: 1}
checkpoint: {every: 3}
run: {dir: run, log_every: 1}
YAML
ckpt=run/checkpoints

# ---- save, inspect, eval, resume ---------------------------------------------------------------
expect_ok "saved  step      6" "$switchyard" train tiny.yaml
check "train.log holds what the console showed, each line with a UTC time, after a header" \
  bash -c 'diff <(grep -v -- "---- switchyard" run/train.log | sed -E "s/^[^ ]+ //") stdout.txt &&
           test "$(grep -c -- "---- switchyard .* train$" run/train.log)" -eq 1 &&
           ! grep -Ev "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z " run/train.log'
check "every metrics.jsonl record ends with its time and the seconds since the run started" \
  bash -c 'test "$(grep -cE "\"time\": \"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{12}Z\", \"elapsed_s\": [0-9]+\.[0-9]{3}}$" run/metrics.jsonl)" -eq "$(wc -l <run/metrics.jsonl)"'
check "step_00000003.h5 and step_00000006.h5 written, latest names the newer" \
  test -f $ckpt/step_00000003.h5 -a -f $ckpt/step_00000006.h5 -a "$(cat $ckpt/latest)" = step_00000006.h5
expect_ok "/model/layers/1/moe/experts/w2" "$switchyard" inspect $ckpt/step_00000006.h5
check "inspect prints the step, the provenance, the config and each tensor's shape and norm" \
  bash -c 'grep -q "^step: 6$" stdout.txt && grep -q "^optimizer_step: 6$" stdout.txt &&
           grep -q "^format_version: 1$" stdout.txt && grep -q "^  hdf5: " stdout.txt &&
           grep -q "^    d_model: 16$" stdout.txt &&
           grep -q "/optimizer/exp_avg_sq/embedding  *\[256, 16\]  *norm [0-9]" stdout.txt'
expect_ok "\"checkpoint\": \"$ckpt/step_00000006.h5\"" "$switchyard" eval tiny.yaml --checkpoint $ckpt/step_00000006.h5
# A checkpoint argument may also be a checkpoints folder, a run folder or the `latest` pointer.
expect_ok "checkpoint: $ckpt/step_00000006.h5" "$switchyard" inspect $ckpt/latest
expect_ok "checkpoint: $ckpt/step_00000006.h5" "$switchyard" inspect $ckpt
expect_ok "checkpoint: $ckpt/step_00000006.h5" "$switchyard" inspect run
expect_ok "\"checkpoint\": \"$ckpt/step_00000006.h5\"" "$switchyard" eval tiny.yaml --checkpoint $ckpt
expect_ok "line 1" "$switchyard" generate tiny.yaml --checkpoint $ckpt/latest --prompt "line 1" --tokens 3
mkdir -p no_checkpoints dangling
echo step_00000042.h5 > dangling/latest
expect 1 "no_checkpoints: no loadable checkpoint in this folder" "$switchyard" inspect no_checkpoints
expect 1 "no_checkpoints: no loadable checkpoint in this folder" "$switchyard" eval tiny.yaml --checkpoint no_checkpoints
expect 1 "dangling/latest: names step_00000042.h5, which does not exist" "$switchyard" generate tiny.yaml --checkpoint dangling/latest --prompt x
expect_ok "resumed from $ckpt/step_00000006.h5 at step 6" "$switchyard" train tiny.yaml --resume auto --set train.steps=9
check "metrics.jsonl logs steps 1..9 once each after the resume" \
  test "$(grep -v val_loss run/metrics.jsonl | grep -o '^{"step": [0-9]*' | tr -dc '0-9\n' | tr '\n' ' ')" = "1 2 3 4 5 6 7 8 9 "
check "train.log is appended to: a second header, then the resume" \
  bash -c 'test "$(grep -c -- "---- switchyard .* train$" run/train.log)" -eq 2 &&
           grep -q "Z resumed from run/checkpoints/step_00000006.h5 at step 6$" run/train.log &&
           grep -q "Z step      9/9 | loss" run/train.log'
# Under mpirun, with the experts split over 2 ranks: the layout change is a note, not an error.
expect_ok "note: changed since the checkpoint: parallel.expert_parallel (checkpoint 1, config 2)" \
  "${mpi2[@]}" "$switchyard" train tiny.yaml --resume auto --set train.steps=12 --set parallel.expert_parallel=2
expect_ok "\"checkpoint\": \"$ckpt/step_00000012.h5\"" "${mpi2[@]}" "$switchyard" eval tiny.yaml --checkpoint $ckpt/step_00000012.h5 --set parallel.expert_parallel=2
expect_ok "\"checkpoint\": \"$ckpt/step_00000012.h5\"" "${mpi2[@]}" "$switchyard" eval tiny.yaml --checkpoint $ckpt --set parallel.expert_parallel=2
expect 1 "no_checkpoints: no loadable checkpoint in this folder" "${mpi2[@]}" "$switchyard" eval tiny.yaml --checkpoint no_checkpoints --set parallel.expert_parallel=2

# checkpoint.init_from: a new run from those weights, on 2 ranks, at its own step 0.
expect_ok "initialised from $ckpt/step_00000012.h5 (step 12 of its run)" \
  "${mpi2[@]}" "$switchyard" train tiny.yaml --set train.steps=2 --set run.dir=run_init \
  --set checkpoint.init_from=run --set parallel.expert_parallel=2 --set train.lr=1e-3
check "the initialised run logs its steps 1..2" \
  test "$(grep -v val_loss run_init/metrics.jsonl | grep -o '^{"step": [0-9]*' | tr -dc '0-9\n' | tr '\n' ' ')" = "1 2 "
# checkpoint.upcycle: a dense run's FFN into every expert, the experts split over 2 ranks.
expect_ok "saved  step      2" "$switchyard" train tiny.yaml --set moe.num_experts=0 \
  --set model.ffn_hidden=16 --set train.steps=2 --set run.dir=run_dense
expect_ok "upcycled from run_dense/checkpoints/step_00000002.h5 (step 2 of its run)" \
  "${mpi2[@]}" "$switchyard" train tiny.yaml --set train.steps=2 --set run.dir=run_upcycled \
  --set checkpoint.init_from=run_dense --set checkpoint.upcycle=true \
  --set parallel.expert_parallel=2 --set train.lr=1e-3
expect 1 "checkpoint.init_from: $ckpt/step_00000012.h5: the config differs from the checkpoint's in keys that shape the model: model.d_model (checkpoint 16, config 32)" \
  "$switchyard" train tiny.yaml --set run.dir=run_init_bad --set checkpoint.init_from=$ckpt --set model.d_model=32

# ---- crash safety: a half-written temporary file and a newer broken step file are passed over --
good=$ckpt/step_00000012.h5
head -c 3000 $good > $ckpt/step_00000015.h5.tmp
echo garbage > $ckpt/step_00000099.h5
echo step_00000099.h5 > $ckpt/latest
expect_ok "resumed from $good at step 12" "$switchyard" train tiny.yaml --resume auto --set train.steps=12
check "auto says what it skipped" grep -q "resume auto: skipped .*step_00000099.h5: not an HDF5 file" stdout.txt
expect_ok "checkpoint: $good" "$switchyard" inspect $ckpt
check "a folder says what it skipped" grep -q "^note: skipped .*step_00000099.h5: not an HDF5 file" stderr.txt
expect 1 "step_00000099.h5: not an HDF5 file" "$switchyard" inspect $ckpt/latest
expect_ok "resume auto: no checkpoint in empty; starting fresh" "$switchyard" train tiny.yaml --resume auto --set train.steps=1 --set checkpoint.dir=empty --set run.dir=run_fresh

# ---- bad checkpoints: one line, exit status 1 --------------------------------------------------
bad() {  # bad NAME: a fresh copy of a good checkpoint
  cp $good "$1.h5"
  echo "$1.h5"
}
head -c 20000 $good > truncated.h5
expect 1 "truncated.h5: cannot open as HDF5 (truncated or corrupted): truncated file" "$switchyard" train tiny.yaml --resume truncated.h5
head -c 5000 /dev/urandom > garbage.h5
expect 1 "garbage.h5: not an HDF5 file" "$switchyard" train tiny.yaml --resume garbage.h5
expect 1 "nothing.h5: no such file" "$switchyard" train tiny.yaml --resume nothing.h5
f=$(bad corrupt); "$tamper" $f corrupt /model/layers/0/attn/wq
expect 1 "corrupt.h5: cannot read /model/layers/0/attn/wq: data error detected by Fletcher32 checksum" "$switchyard" train tiny.yaml --resume $f
# A damaged object header: HDF5 cannot close what the failed read leaves, and must stay quiet.
f=$(bad header); "$tamper" $f corrupt-header /model/layers
expect 1 "header.h5: cannot look up /model/layers/0: incorrect metadata checksum" "$switchyard" train tiny.yaml --resume $f
expect 1 "header.h5: cannot open /model/layers: incorrect metadata checksum" "$switchyard" inspect $f
f=$(bad root); "$tamper" $f corrupt-header /
expect 1 "root.h5: cannot read the object header of the root group: incorrect metadata checksum" "$switchyard" inspect $f
# Token files carry checksummed metadata too: a damaged dataset header is an error, not a file
# read some other way.
cp tokens.h5 damaged_tokens.h5 && "$tamper" damaged_tokens.h5 corrupt-header /train
expect 1 "damaged_tokens.h5: cannot open /train: incorrect metadata checksum" "$switchyard" train tiny.yaml --set data.path=damaged_tokens.h5 --set run.dir=run_damaged
# Every damaged file the fuzzers kept (bench/fuzz/README.md): one line, status 1. Half of them
# left pieces that HDF5 could not close, and its exit handler printed below our line.
for input in "$fuzz_inputs"/*/*/*; do
  expect 1 "$(basename "$input"): " "$switchyard" inspect "$input"
done
f=$(bad missing); "$tamper" $f delete /model/layers/1/moe/experts/w1
expect 1 "missing.h5: missing tensor /model/layers/1/moe/experts/w1" "$switchyard" train tiny.yaml --resume $f
check "train.log ends with why the run stopped" \
  bash -c 'tail -n 1 run/train.log | grep -q "Z error: missing.h5: missing tensor /model/layers/1/moe/experts/w1$"'
expect 1 "missing.h5: missing tensor /model/layers/1/moe/experts/w1" "$switchyard" eval tiny.yaml --checkpoint $f
expect 1 "rank 0: missing.h5: missing tensor /model/layers/1/moe/experts/w1" "${mpi2[@]}" "$switchyard" train tiny.yaml --resume $f --set parallel.expert_parallel=2
f=$(bad shape); "$tamper" $f reshape /model/layers/0/attn/wq 16,8
expect 1 "shape.h5: /model/layers/0/attn/wq has shape [16, 8], the config needs [16, 16]" "$switchyard" train tiny.yaml --resume $f
f=$(bad future); "$tamper" $f set-version 2
expect 1 "future.h5: format_version 2 is newer than this build reads (1)" "$switchyard" train tiny.yaml --resume $f
expect 1 "future.h5: format_version 2 is newer than this build reads (1)" "$switchyard" inspect $f
expect 1 "keys that shape the model: model.d_model (checkpoint 16, config 32), moe.num_experts (checkpoint 4, config 8)" \
  "$switchyard" train tiny.yaml --resume $good --set model.d_model=32 --set moe.num_experts=8
expect 2 "--resume needs a value" "$switchyard" train tiny.yaml --resume

finish
