#!/usr/bin/env bash
# Checkpoints that stand alone (issues 13 and 14): eval, generate and inspect given only a
# checkpoint use the config and the tokenizer stored in it. A run trained at 2 ranks is evaluated
# in one process at another micro-batch size and must print the logged val_loss character for
# character (with its experts split over the 2 ranks, within 1e-6 relative: docs/config.md,
# eval); generate works with the token file moved away, for bytes and for a SentencePiece
# tokenizer; a model vocabulary smaller than the data's is refused naming both.
# Usage: cli_standalone.sh SWITCHYARD
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
mpi2=(mpirun -np 2 --oversubscribe --bind-to none)

# run_ok WHAT COMMAND...: exit status 0 and no error line.
run_ok() {
  local what=$1
  shift
  if timeout 300 "$@" >stdout.txt 2>stderr.txt && ! grep -q "error" stderr.txt; then ok "$what"; else fail "$what"; fi
}
# run_fails WHAT STATUS PATTERN COMMAND...: that exit status and PATTERN in stderr.
run_fails() {
  local what=$1 status=$2 pattern=$3
  shift 3
  timeout 300 "$@" >stdout.txt 2>stderr.txt
  local got=$?
  if [ $got -eq "$status" ] && grep -q -F -- "$pattern" stderr.txt; then ok "$what"; else fail "$what (status $got)"; fi
}
val_loss_of() { grep -o '"val_loss": [^,}]*' "$1" | tail -1 | cut -d' ' -f2; }
same_val_loss() {  # same_val_loss WHAT LOGGED TOLERANCE: stdout.txt's val_loss against LOGGED
  local got
  got=$(val_loss_of stdout.txt)
  if [ -n "$got" ] && { [ "$got" = "$2" ] || { [ "$3" != 0 ] &&
       awk -v a="$got" -v b="$2" -v t="$3" 'BEGIN { d = (a - b) / b; exit !(d <= t && -d <= t) }'; }; }; then
    ok "$1: $got (logged $2)"
  else
    fail "$1: got '$got', logged $2"
  fi
}

tiny_run_files
# ---- bytes: train at 2 ranks (micro-batch 2), evaluate alone at micro-batch 3 -----------------
for layout in dp ep; do
  ep=1
  [ $layout = ep ] && ep=2
  timeout 300 "${mpi2[@]}" "$switchyard" train tiny.yaml --set train.steps=6 --set run.dir=run_$layout \
    --set eval.every=6 --set eval.tokens=320 --set parallel.expert_parallel=$ep >stdout.txt 2>stderr.txt ||
    { fail "train at 2 ranks, expert_parallel $ep"; continue; }
  logged=$(val_loss_of run_$layout/metrics.jsonl)
  tolerance=0
  [ $layout = ep ] && tolerance=1e-6
  run_ok "eval --checkpoint run_$layout/checkpoints/latest alone, micro-batch 3" \
    "$switchyard" eval --checkpoint run_$layout/checkpoints/latest --set train.micro_batch_size=3
  same_val_loss "one process, micro-batch 3, of a 2-rank run (expert_parallel $ep)" "$logged" $tolerance
  if [ $layout = ep ]; then
    if grep -q "^note: the checkpoint's layout does not fit 1 process: parallel.expert_parallel 2 -> 1" stderr.txt
    then ok "the layout reset is one note"; else fail "no layout note"; fi
    run_ok "eval RUN_DIR under mpirun keeps the stored layout" "${mpi2[@]}" "$switchyard" eval --checkpoint run_ep
    same_val_loss "2 ranks, expert_parallel 2, micro-batch 2" "$logged" 0
    grep -q "layout does not fit" stderr.txt && fail "a layout that fits was changed"
  fi
done
# generate's key/value cache under expert parallelism: each new token alone crosses the
# all-to-alls; 2 ranks draw what one process draws, and what the whole-text forwards draw.
generate_ids=("$switchyard" generate --checkpoint run_ep --prompt-ids "108 105 110 101" --tokens 12 --temperature 0)
run_ok "generate at 2 ranks, expert_parallel 2" "${mpi2[@]}" "${generate_ids[@]}"
cp stdout.txt generate_ep2.txt
run_ok "generate in one process" "${generate_ids[@]}"
cp stdout.txt generate_one.txt
run_ok "generate --no-kv-cache" "${generate_ids[@]}" --no-kv-cache
if [ "$(wc -w <generate_one.txt)" = 16 ] && cmp -s generate_ep2.txt generate_one.txt &&
   cmp -s stdout.txt generate_one.txt
then ok "the cache at 2 ranks, in one process and no cache draw the same 12 tokens"
else fail "generate with the cache"; cat generate_ep2.txt generate_one.txt stdout.txt; fi
# score: multiple-choice accuracy from the checkpoint alone, HellaSwag's member names; the same
# at 2 ranks with the experts split; a question per --output line; bad input named.
cat >questions.jsonl <<'QUESTIONS'
{"ctx": "line 1", "endings": [": abc", "xyz", "\u00e9t\u00e9"], "label": 0}
{"ctx": "line 2", "endings": [": q", ": rs"], "label": "1"}
{"ctx": "line", "endings": [" 3", " three"], "label": 0}
QUESTIONS
score=("$switchyard" score --checkpoint run_ep --input questions.jsonl --context-field ctx
       --choices-field endings --answer-field label)
run_ok "score --checkpoint alone" "${score[@]}" --output scores.jsonl
if grep -q '^{"examples": 3, "accuracy": [0-9.e-]*, "accuracy_norm": [0-9.e-]*, "checkpoint": ' stdout.txt &&
   [ "$(grep -c '^{"record": [0-2], "answer": [01], "choice": [0-2], "choice_norm": [0-2], "loglik": \[' scores.jsonl)" = 3 ]
then ok "score prints the accuracies and writes a line per question"; else fail "score's output"; cat scores.jsonl; fi
cp stdout.txt score_one.txt
run_ok "score at 2 ranks, expert_parallel 2" "${mpi2[@]}" "${score[@]}"
if cmp -s stdout.txt score_one.txt; then ok "2 ranks score as one process"; else fail "score at 2 ranks"; cat score_one.txt; fi
run_fails "score --output refuses an existing file" 1 "--output scores.jsonl: exists; remove it" \
  "${score[@]}" --output scores.jsonl
echo '{"ctx": "a", "endings": ["b", "c"], "label": 2}' >bad_questions.jsonl
# eval.questions: a run's logged accuracies are score's of its checkpoint at that step.
questions=(--set eval.questions=questions.jsonl --set eval.questions_context=ctx
           --set "eval.questions_choices=[endings]" --set eval.questions_answer=label)
run_ok "train with eval.questions" "$switchyard" train tiny.yaml --set train.steps=4 \
  --set eval.every=4 --set eval.tokens=320 --set run.dir=run_questions "${questions[@]}"
logged=$(grep -o '"choice_accuracy": [^,}]*' run_questions/metrics.jsonl | tail -1 | cut -d' ' -f2)
logged_norm=$(grep -o '"choice_accuracy_norm": [^,}]*' run_questions/metrics.jsonl | tail -1 | cut -d' ' -f2)
if grep -q "^.*eval   step      4 | .* | choice_accuracy [0-9.]* | choice_accuracy_norm [0-9.]* |" run_questions/train.log
then ok "the eval line prints choice_accuracy"
else fail "choice_accuracy in train.log"; fi
run_ok "score the run's checkpoint" "$switchyard" score --checkpoint run_questions \
  --input questions.jsonl --context-field ctx --choices-field endings --answer-field label
if [ -n "$logged" ] && grep -q "\"accuracy\": $logged, \"accuracy_norm\": $logged_norm," stdout.txt
then ok "the logged choice_accuracy ($logged, norm $logged_norm) is score's"
else fail "logged choice_accuracy '$logged' against score's"; cat stdout.txt; fi
run_fails "a bad eval.questions file stops the run before its first step" 1 \
  "bad_questions.jsonl: line 1: field \"label\" 2 is not a choice" \
  "$switchyard" train tiny.yaml --set run.dir=run_bad_questions --set eval.tokens=320 "${questions[@]}" \
  --set eval.questions=bad_questions.jsonl
run_fails "score names a bad question's file, line and member" 1 \
  'bad_questions.jsonl: line 1: field "label" 2 is not a choice: there are 2' \
  "$switchyard" score --checkpoint run_ep --input bad_questions.jsonl --context-field ctx \
  --choices-field endings --answer-field label
run_fails "eval with neither CONFIG nor --checkpoint is a usage error" 2 \
  "switchyard eval: needs CONFIG or --checkpoint" "$switchyard" eval
run_fails "a stored config's bad --set names the checkpoint" 1 \
  "run_dp/checkpoints/step_00000006.h5 (its config): train.micro_batch_size: must be >= 1, got 0" \
  "$switchyard" eval --checkpoint run_dp/checkpoints/step_00000006.h5 --set train.micro_batch_size=0
run_ok "CONFIG and --checkpoint together: as before" "$switchyard" eval tiny.yaml --checkpoint run_dp --set eval.tokens=320
same_val_loss "eval CONFIG --checkpoint" "$(val_loss_of run_dp/metrics.jsonl)" 0

run_ok "inspect prints the tokenizer" "$switchyard" inspect run_dp
if grep -q "^tokenizer: bytes (vocab 256)$" stdout.txt; then ok "inspect: tokenizer: bytes (vocab 256)"; else fail "inspect's tokenizer line"; fi

mkdir -p moved && mv tokens.h5 moved/
run_ok "generate --checkpoint alone, with the token file moved away" \
  "$switchyard" generate --checkpoint run_dp/checkpoints/latest --prompt "line 1" --tokens 8 --temperature 0
if head -c 6 stdout.txt | grep -q "^line 1"; then ok "generate prints the prompt and its continuation"; else fail "generate's output"; fi
run_fails "eval without its token file says which data.path and how to name another" 1 \
  "tokens.h5: no such file (eval reads its validation tokens from the checkpoint's data.path; --set data.path=FILE" \
  "$switchyard" eval --checkpoint run_dp
run_ok "eval --set data.path=moved/tokens.h5" "$switchyard" eval --checkpoint run_dp --set data.path=moved/tokens.h5
same_val_loss "eval with the token file moved" "$(val_loss_of run_dp/metrics.jsonl)" 0
run_ok "eval at another model.seq_len" "$switchyard" eval --checkpoint run_dp \
  --set data.path=moved/tokens.h5 --set model.seq_len=8
if grep -q "^note: model.seq_len 8, the checkpoint's run 16$" stderr.txt; then
  ok "eval at another length says so"
else
  fail "eval's note on model.seq_len"; cat stderr.txt
fi
mv moved/tokens.h5 .

# ---- supervised fine-tuning: prepare-data --format sft, the loss on the responses only ----------
for i in $(seq 1 60); do
  echo "{\"prompt\": \"Q: what is $i plus $i? A:\", \"response\": \" $((i + i)).\"}"
done > chat.jsonl
run_ok "prepare-data --format sft" "$switchyard" prepare-data --format sft --input chat.jsonl \
  --output sft.h5 --val-fraction 0.25
if grep -qE "60 examples \(15 val\).*loss mask: [0-9]+ of the [0-9]+ train tokens are response" \
     <(tr '\n' ' ' < stdout.txt); then
  ok "prepare-data sft: examples and the trained share"
else
  fail "prepare-data sft's summary"; cat stdout.txt
fi
timeout 300 "${mpi2[@]}" "$switchyard" train tiny.yaml --set data.path=sft.h5 \
  --set checkpoint.init_from=run_dp --set train.steps=4 --set run.dir=run_sft --set eval.every=4 \
  --set eval.tokens=160 >stdout.txt 2>stderr.txt && ok "fine-tune at 2 ranks from run_dp" ||
  fail "fine-tune at 2 ranks from run_dp"
run_ok "inspect a token file" "$switchyard" inspect sft.h5
if grep -qE "^loss mask: train [0-9]+ of [0-9]+ tokens trained \([0-9.]+%\); val " stdout.txt &&
   grep -q "^token file: sft.h5" stdout.txt; then ok "inspect: the loss mask's trained share"
else fail "inspect of a token file"; fi
# Each example is a document: floor(0.75 * 60) = 45 train, 15 val.
if grep -q "^documents: train 45, val 15$" stdout.txt; then ok "inspect: the document counts"
else fail "inspect's documents line"; cat stdout.txt; fi
if grep -qE '"lm_targets": [1-9][0-9]*' run_sft/metrics.jsonl && ! grep -q lm_targets run_dp/metrics.jsonl
then ok "metrics.jsonl has lm_targets with a loss mask only"; else fail "lm_targets in metrics.jsonl"; fi
logged=$(val_loss_of run_sft/metrics.jsonl)
run_ok "eval of the fine-tune alone, micro-batch 3" "$switchyard" eval --checkpoint run_sft \
  --set train.micro_batch_size=3
same_val_loss "masked val_loss, one process, of a 2-rank run" "$logged" 0
if grep -qE '"val_targets": [0-9]+' stdout.txt; then ok "eval prints val_targets"; else fail "no val_targets"; fi

# Conversations ({"messages": [...]}) rendered in a chat format, which the token file and then the
# fine-tune's checkpoint record, and generate --chat renders its prompt in.
for i in $(seq 1 40); do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"$i + $i?\"}, {\"role\": \"assistant\", \"content\": \"$((i + i))\"}]}"
done > messages.jsonl
run_ok "prepare-data --format sft of conversations" "$switchyard" prepare-data --format sft \
  --input messages.jsonl --output messages.h5 --chat-template plain --val-fraction 0.25
if grep -q "40 examples (10 val)" stdout.txt; then ok "conversations: one example each"
else fail "prepare-data sft of conversations"; cat stdout.txt; fi
# An instruction dataset (Alpaca's instruction, input, output) as user/assistant pairs.
for i in $(seq 1 20); do
  echo "{\"instruction\": \"Add.\", \"input\": \"$i and $i\", \"output\": \"$((i + i))\"}"
done > alpaca.jsonl
run_ok "prepare-data --format sft of instruction pairs" "$switchyard" prepare-data --format sft \
  --input alpaca.jsonl --output alpaca.h5 --prompt-field instruction,input --response-field output \
  --chat-template plain --system "Be brief."
run_ok "inspect the instruction pairs" "$switchyard" inspect alpaca.h5
if grep -q '^tokenizer: bytes (vocab 256), chat template plain, system message "Be brief."$' stdout.txt
then ok "pairs in a chat template record it and the system message"; else fail "inspect of the pairs"; cat stdout.txt; fi
run_ok "a fine-tune on instruction pairs" "$switchyard" train tiny.yaml --set data.path=alpaca.h5 \
  --set checkpoint.init_from=run_dp --set train.steps=1 --set run.dir=run_alpaca
run_ok "generate --chat after --system" "$switchyard" generate --checkpoint run_alpaca --chat \
  --prompt "Add." --tokens 2 --temperature 0
if head -3 stdout.txt | tr '\n' '|' | grep -q '^System: Be brief.|User: Add.|Assistant:'
then ok "generate --chat puts the fine-tune's system message first"; else fail "generate --chat's system"; cat stdout.txt; fi
run_ok "a fine-tune on conversations" "$switchyard" train tiny.yaml --set data.path=messages.h5 \
  --set checkpoint.init_from=run_dp --set train.steps=2 --set run.dir=run_chat
run_ok "inspect the fine-tune" "$switchyard" inspect run_chat
if grep -q "^tokenizer: bytes (vocab 256), chat template plain$" stdout.txt
then ok "the checkpoint records the chat template"; else fail "inspect's chat template"; cat stdout.txt; fi
run_ok "generate --chat" "$switchyard" generate --checkpoint run_chat --chat --prompt "2 + 2?" \
  --tokens 4 --temperature 0
if head -2 stdout.txt | tr '\n' '|' | grep -q '^User: 2 + 2?|Assistant:'
then ok "generate --chat renders the prompt in the recorded template"; else fail "generate --chat's prompt"; cat stdout.txt; fi
run_ok "generate --chat --chat-template chatml" "$switchyard" generate --checkpoint run_chat --chat \
  --chat-template chatml --prompt "2 + 2?" --tokens 4 --temperature 0
if head -1 stdout.txt | grep -qx '<|im_start|>user' && grep -q "fine-tuned on conversations in plain" stderr.txt
then ok "--chat-template overrides the recorded one, with a note"; else fail "generate --chat-template"; cat stdout.txt stderr.txt; fi

# ---- document masking: each SFT example its own text (docs/data.md, "Document masking") --------
timeout 300 "${mpi2[@]}" "$switchyard" train tiny.yaml --set data.path=sft.h5 \
  --set data.document_mask=true --set checkpoint.init_from=run_dp --set train.steps=4 \
  --set run.dir=run_docs --set eval.every=4 --set eval.tokens=160 >stdout.txt 2>stderr.txt &&
  ok "fine-tune with document masks at 2 ranks" || fail "fine-tune with document masks"
if grep -q "document masking: attention and rotary positions restart" stdout.txt; then
  ok "start-up says document masking is on"; else fail "no document masking line"; cat stdout.txt; fi
logged_docs=$(val_loss_of run_docs/metrics.jsonl)
if [ -n "$logged_docs" ] && [ "$logged_docs" != "$logged" ]; then
  ok "document masks change the validation loss ($logged -> $logged_docs)"
else fail "document-masked val_loss '$logged_docs' against '$logged'"; fi
run_ok "eval of the document-masked fine-tune alone, micro-batch 3" "$switchyard" eval \
  --checkpoint run_docs --set train.micro_batch_size=3
same_val_loss "document-masked val_loss, one process, of a 2-rank run" "$logged_docs" 0

# ---- vocab_size: a model vocabulary below the data's is refused, both numbers named ------------
run_fails "train with model.vocab_size 200 on byte tokens" 1 "tokens.h5: vocab_size 256 exceeds model.vocab_size 200" \
  "$switchyard" train tiny.yaml --set model.vocab_size=200 --set train.steps=1 --set run.dir=run_small_vocab

# ---- SentencePiece: the model file travels inside the checkpoint -------------------------------
if "$switchyard" tokenizer train --input text/a.txt --vocab-size 300 --output tok.model >spm.log 2>&1 &&
   "$switchyard" prepare-data --input text --format text --tokenizer tok.model --output spm.h5 >>spm.log 2>&1; then
  run_ok "train on SentencePiece tokens" "$switchyard" train tiny.yaml --set data.path=spm.h5 \
    --set model.vocab_size=300 --set train.steps=3 --set run.dir=run_spm
  mkdir -p moved && mv spm.h5 tok.model moved/
  run_ok "inspect a SentencePiece checkpoint" "$switchyard" inspect run_spm
  if grep -qE "^tokenizer: sentencepiece \(tok.model, vocab 300, model [0-9]+ bytes\)$" stdout.txt &&
     ! grep -q "^  /tokenizer_model" stdout.txt; then
    ok "inspect: tokenizer: sentencepiece (tok.model, vocab 300, model N bytes), not a tensor"
  else
    fail "inspect's SentencePiece line"
  fi
  run_ok "generate from a SentencePiece checkpoint alone" \
    "$switchyard" generate --checkpoint run_spm --prompt "line 7:" --tokens 5 --temperature 0
  if head -c 7 stdout.txt | grep -q "^line 7:"; then ok "SentencePiece generate decodes"; else fail "SentencePiece generate"; fi
  run_fails "eval of a SentencePiece checkpoint on byte tokens is refused" 1 \
    "tokens.h5: its tokenizer bytes is not the one the checkpoint's run used, sentencepiece (tok.model, vocab 300" \
    "$switchyard" eval --checkpoint run_spm --set data.path=tokens.h5
  run_fails "model.vocab_size 280 under a 300-piece tokenizer" 1 "vocab_size 300 exceeds model.vocab_size 280" \
    "$switchyard" train tiny.yaml --set data.path=moved/spm.h5 --set model.vocab_size=280 --set train.steps=1 --set run.dir=run_spm_small
else
  echo "skipped: SentencePiece (tokenizer train failed:)"; sed 's/^/  | /' spm.log | tail -3
fi

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
