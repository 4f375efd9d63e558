#!/usr/bin/env bash
# switchyard export --format hf checked by an outside client, Hugging Face transformers, in one
# command (docs/export.md):
#   bash bench/hf_export/check.sh OUTDIR
# Builds switchyard (CPU-only by default: the check needs no GPU), prepares a byte-level corpus
# from the repository's own docs (no network needed), and for each exported kind (Mixtral,
# Llama with an untied head, grouped-query attention, OLMoE, Llama 3.1's rotary, Qwen3,
# Qwen3-MoE): trains ~50 steps, runs `switchyard eval` (fp32 CPU backend) and
# `switchyard generate --temperature 0` on the checkpoint, exports it in fp32 (and the MoE also in
# bf16), then bench/hf_export/compare.py loads each export with transformers and compares the
# validation loss (fp32: within 1e-4 relative; bf16 weights: 1e-2) and the greedy continuation of
# a 32-token prompt (fp32).
# Then the other way: folders transformers itself wrote (bench/hf_export/make_hf_model.py: a Llama,
# an OLMoE and a Qwen3 in fp32, a Mixtral and a Qwen3-MoE in bf16, and a Mixtral and a Qwen3-MoE
# saved with fused experts; sharded, grouped-query, other rotary thetas) read by `switchyard
# import`, and `switchyard eval`'s loss compared with transformers' (1e-4).
# The cases run JOBS at a time (most of a case's time is Python importing torch and transformers);
# the table keeps their order. Prints the table last; OUTDIR gets build.log, <case>.log,
# results.jsonl, summary.txt (steps). Exit status 0 when every row passed.
# Environment (all optional):
#   SY_BUILD_DIR=build-hfexport  build folder (configured when new, then built incrementally)
#   SY_CUDA=OFF                  ON builds the CUDA backend too (slower to build; not needed)
#   STEPS=50                     training steps per case
#   TRAIN_SET="k=v ..."          extra --set overrides for training (e.g. run.backend=cuda)
#   WORK=/tmp/sy_hf_export       scratch: corpus, runs, exports
#   JOBS=min(8, cores / 2)       cases at once (1: one after another); BLAS and torch threads are
#                                the cores shared among them
set -uo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/../../launch/lib.sh"
sy_init "${1:?usage: bash bench/hf_export/check.sh OUTDIR}"
out=$sy_out
build=${SY_BUILD_DIR:-build-hfexport}
work=${WORK:-/tmp/sy_hf_export}
steps=${STEPS:-50}
cores=$(nproc)
jobs=${JOBS:-$(( cores / 2 < 8 ? cores / 2 : 8 ))}
sy_dry && jobs=1  # the printed commands in order
[ "$jobs" -ge 1 ] 2>/dev/null || { echo "JOBS must be a whole number from 1, got '$jobs'"; exit 1; }
threads=$(( cores / jobs > 4 ? 4 : cores / jobs ))
[ "$threads" -ge 1 ] || threads=1
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
sy_do rm -rf "$work"
sy_do mkdir -p "$work"
sy_dry || { : > "$out/results.jsonl"; rm -f "$out"/rows-*.jsonl; }  # a rerun into OUTDIR starts clean

sy_log build
sy_dry || {
  date -u
  git log -1 --format='commit %h %s' 2>/dev/null
  python3 -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__, "safetensors", safetensors.__version__)'
  python3 -c 'import h5py; print("h5py", h5py.__version__)' || echo "h5py: not installed (compare.py reads /val from the corpus text instead)"
} >> "$sy_log_path" 2>&1
if [ ! -f "$build/CMakeCache.txt" ]; then
  sy_configure "$build" -DSY_CUDA="${SY_CUDA:-OFF}" || {
    echo "configure failed: $out/build.log"; tail -20 "$out/build.log"; exit 1; }
fi
sy_build "$build" switchyard || exit 1
sy="$build/switchyard"

# One text file (so that compare.py can also find /val from it without h5py: the bytes after
# floor(0.95 * size), docs/data.md), byte tokens.
sy_dry || cat README.md docs/*.md > "$work/corpus.txt"
sy_step -l build prepare-data "$sy" prepare-data --input "$work/corpus.txt" --format text \
  --output "$work/tokens.h5" || { echo "prepare-data failed: $out/build.log"; exit 1; }

prompt="The model is trained on the text"  # 32 bytes = 32 tokens
new_tokens=24                            # 32 + 24 <= seq_len 64: no sliding window on our side

# compare.py stopped before its row (an import or load error): a failed row, so that the table
# still shows the case. row_or_failure ROWS ROWS_BEFORE LABEL DTYPE TOLERANCE LOG
row_or_failure() {
  [ "$(wc -l < "$1")" = "$2" ] || return 0
  echo "{\"label\": \"$3\", \"dtype\": \"$4\", \"tolerance\": $5, \"ok\": false, \"greedy\": \"compare.py failed: see $6\"}" >> "$1"
}

# read_eval EVAL_JSON LOG: `switchyard eval`'s output added to LOG, and its last JSON line's
# val_loss (every digit) and sequences set in the caller's val_loss and sequences.
read_eval() {
  cat "$1" >> "$2"
  local fields
  fields=$(python3 -c 'import json,sys; r=json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1]); print(repr(r["val_loss"]), r["sequences"])' "$1")
  read -r val_loss sequences <<< "$fields"
}

# run_case NAME MOE_YAML [EXPORT_DTYPES [MODEL_YAML]]: every step's output in OUTDIR/NAME.log.
# MODEL_YAML: keys added to the model section (", key: value, ...").
run_case() {
  local name=$1 moe=$2 dtypes=${3:-fp32} model=${4:-} log="$out/$1.log" config="$work/$1.yaml" dtype
  sy_dry || cat > "$config" <<EOF
model: {vocab_size: 256, seq_len: 64, d_model: 64, n_layers: 2, n_heads: 4, ffn_hidden: 160, tie_embeddings: $([ "$name" = dense ] && echo false || echo true)$model}
moe: $moe
train: {micro_batch_size: 8, steps: $steps, warmup_steps: 5, lr: 0.003}
data: {path: $work/tokens.h5}
eval: {every: 0, tokens: 1024}
checkpoint: {every: 0}
run: {dir: $work/run-$name, log_every: 10, backend: cpu, precision: fp32}
EOF
  local set=()
  for kv in ${TRAIN_SET:-}; do set+=(--set "$kv"); done
  sy_step -l "$name" "$name train" "$sy" train "$config" "${set[@]}" ||
    { echo "$name: train failed ($log)"; return 1; }
  # eval on the fp32 CPU backend whatever trained: the reference the export must match.
  sy_step -l "$name" -o "$work/$name.eval.json" "$name eval" "$sy" eval "$config" \
    --checkpoint "$work/run-$name/checkpoints" --set run.backend=cpu ||
    { echo "$name: eval failed ($log)"; return 1; }
  local val_loss=DRY sequences=DRY
  sy_dry || read_eval "$work/$name.eval.json" "$log"
  sy_step -l "$name" -o "$work/$name.generated.txt" "$name generate" "$sy" generate "$config" \
    --checkpoint "$work/run-$name/checkpoints" --set run.backend=cpu --prompt "$prompt" \
    --tokens "$new_tokens" --temperature 0 || { echo "$name: generate failed ($log)"; return 1; }
  sy_dry || cat "$work/$name.generated.txt" >> "$log"
  local rc=0
  for dtype in $dtypes; do
    sy_step -l "$name" "$name export $dtype" "$sy" export "$work/run-$name/checkpoints" \
      --format hf --dtype "$dtype" --output "$work/hf-$name-$dtype" ||
      { echo "$name: export $dtype failed ($log)"; rc=1; continue; }
    # fp32 weights: the same function, to 1e-4 (target); bf16 weights perturb it: a loose bound.
    local tolerance=1e-4 greedy=(--prompt "$prompt" --generated "$work/$name.generated.txt" --new-tokens "$new_tokens")
    if [ "$dtype" = bf16 ]; then tolerance=1e-2; greedy=(); fi
    local rows="$out/rows-$name.jsonl" rows_before=0
    sy_dry || { touch "$rows"; rows_before=$(wc -l < "$rows"); }
    sy_step -l "$name" "$name compare $dtype" python3 bench/hf_export/compare.py \
      --export "$work/hf-$name-$dtype" --tokens "$work/tokens.h5" --text "$work/corpus.txt" \
      --val-loss "$val_loss" --sequences "$sequences" "${greedy[@]}" --tolerance "$tolerance" \
      --label "$name-$dtype" --json "$rows" || rc=1
    sy_dry && continue
    row_or_failure "$rows" "$rows_before" "$name-$dtype" "$dtype" "$tolerance" "$name.log"
    tail -4 "$log"
  done
  return $rc
}

# import_case NAME ARCH DTYPE [--fused]: a folder transformers itself wrote (make_hf_model.py: random wide
# weights, grouped-query attention, another rotary theta and norm epsilon, sharded safetensors)
# read by `switchyard import`, evaluated by `switchyard eval` and compared with transformers' loss
# on the same sequences. The weights are the same numbers on both sides whatever DTYPE (bf16 is
# read exactly), so fp32 arithmetic on both sides agrees to 1e-4 either way.
import_case() {
  local name=$1 arch=$2 dtype=$3 fused=${4:-} log="$out/$1.log" folder="$work/made-$1"
  sy_step -l "$name" "$name make" python3 bench/hf_export/make_hf_model.py --arch "$arch" \
    --dtype "$dtype" --out "$folder" $fused ||
    { echo "$name: make_hf_model.py failed ($log)"; return 1; }
  sy_step -l "$name" "$name import" "$sy" import "$folder" --output "$work/$name.h5" \
    --overwrite || { echo "$name: import failed ($log)"; return 1; }
  sy_step -l "$name" -o "$work/$name.eval.json" "$name eval" "$sy" eval \
    --checkpoint "$work/$name.h5" --set "data.path=$work/tokens.h5" --set run.backend=cpu \
    --tokens 1024 || { echo "$name: eval failed ($log)"; return 1; }
  local val_loss=DRY sequences=DRY
  sy_dry || read_eval "$work/$name.eval.json" "$log"
  local rows="$out/rows-$name.jsonl" rows_before=0 rc=0
  sy_dry || { touch "$rows"; rows_before=$(wc -l < "$rows"); }
  sy_step -l "$name" "$name compare" python3 bench/hf_export/compare.py --export "$folder" \
    --tokens "$work/tokens.h5" --text "$work/corpus.txt" --val-loss "$val_loss" \
    --sequences "$sequences" --tolerance 1e-4 --label "$name" --json "$rows" || rc=1
  sy_dry || row_or_failure "$rows" "$rows_before" "$name" "$dtype" 1e-4 "$name.log"
  return $rc
}

# start_case FUNCTION NAME ARGS...: FUNCTION NAME ARGS... in the background, at most $jobs at once;
# its exit status in $work/NAME.rc.
cases=()
start_case() {
  cases+=("$2")
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  ( "$@"; rc=$?; sy_dry || echo "$rc" > "$work/$2.rc" ) &
}

start_case run_case moe "{num_experts: 4, top_k: 2, expert_hidden: 96}" "fp32 bf16"
start_case run_case dense "{num_experts: 0}" fp32
# Llama 3's attention: 4 query heads over 2 key/value heads, rotary theta 500000, norm eps 1e-6.
start_case run_case gqa "{num_experts: 4, top_k: 2, expert_hidden: 96}" fp32 \
  ", n_kv_heads: 2, rope_theta: 500000, norm_eps: 1e-6"
# OLMoE: QK-norm, the top-k gates left unnormalised (norm_topk_prob false).
start_case run_case olmoe "{num_experts: 4, top_k: 2, expert_hidden: 96, normalize_topk: false}" fp32 \
  ", qk_norm: full"
# Qwen3: per-head QK-norm on heads twice D / H wide, grouped-query; Qwen3-MoE: narrower heads,
# layer 0 dense (mlp_only_layers), gates unnormalised.
# Llama 3.1's rotary scaling (rope_type llama3), its original context cut to 64 positions so
# that at head width 16 every regime of the rule is used (pair 0 kept, 1 blended, the rest
# divided).
start_case run_case llama31 "{num_experts: 0}" fp32 \
  ", n_kv_heads: 2, rope_theta: 500000, rope_scaling: llama3, rope_factor: 8, rope_original_max_position: 64"
start_case run_case qwen3 "{num_experts: 0}" fp32 \
  ", qk_norm: per_head, head_dim: 32, n_kv_heads: 2, rope_theta: 1000000, norm_eps: 1e-6"
start_case run_case qwen3-moe "{num_experts: 4, top_k: 2, expert_hidden: 48, layers: [1], normalize_topk: false}" \
  fp32 ", qk_norm: per_head, head_dim: 8, n_kv_heads: 1"
start_case import_case import-llama llama float32
start_case import_case import-mixtral mixtral bfloat16
start_case import_case import-olmoe olmoe float32
start_case import_case import-llama31 llama31 float32
start_case import_case import-mistral mistral bfloat16
start_case import_case import-qwen3 qwen3 float32
start_case import_case import-qwen3-moe qwen3_moe bfloat16
# transformers 5's runtime layout: fused experts, Mixtral's router renamed mlp.gate.
start_case import_case import-mixtral-fused mixtral float32 --fused
start_case import_case import-qwen3-moe-fused qwen3_moe float32 --fused
wait
for name in "${cases[@]}"; do
  sy_dry || [ "$(cat "$work/$name.rc" 2>/dev/null)" = 0 ] || sy_failed=1
  sy_dry || cat "$out/rows-$name.jsonl" >> "$out/results.jsonl" 2>/dev/null
done

echo
sy_dry || python3 bench/hf_export/compare.py --table "$out/results.jsonl" || sy_failed=1
echo "logs in $out (status $sy_failed)"
exit "$sy_failed"
