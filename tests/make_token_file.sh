#!/usr/bin/env bash
# sy_make_token_file's two kinds, read back by the trainer: the byte-level text (vocab 256) and
# --uniform VOCAB, whose validation loss under the initial model is close to ln(VOCAB) (nothing
# to learn); a VOCAB out of range is refused with a one-line error and exit 1.
#   bash tests/make_token_file.sh SY_MAKE_TOKEN_FILE SWITCHYARD
set -euo pipefail
make=$1 switchyard=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
small=(--set model.d_model=32 --set model.n_layers=1 --set model.n_heads=2
       --set model.seq_len=32 --set moe.num_experts=0 --set model.ffn_hidden=64
       --set eval.tokens=4096)
val_loss() { # FILE VOCAB: the initial model's validation loss on FILE
  "$switchyard" eval configs/example.yaml --set "data.path=$1" --set "model.vocab_size=$2" \
    "${small[@]}" 2> /dev/null | sed -n 's/.*"val_loss": *\([0-9.]*\).*/\1/p'
}
"$make" "$dir/uniform.h5" 100000 8192 --uniform 32768
loss=$(val_loss "$dir/uniform.h5" 32768)
python3 -c "import math, sys; l = float('$loss'); sys.exit(0 if abs(l - math.log(32768)) < 0.1 else 1)" ||
  { echo "uniform tokens: val_loss $loss, expected ~ln(32768) = 10.40" >&2; exit 1; }
"$make" "$dir/text.h5" 100000 8192
loss=$(val_loss "$dir/text.h5" 256)
[ -n "$loss" ] || { echo "text tokens: no val_loss" >&2; exit 1; }
if "$make" "$dir/bad.h5" 1000 --uniform 70000 2> "$dir/err"; then
  echo "--uniform 70000 was accepted" >&2
  exit 1
fi
grep -q "VOCAB must be in" "$dir/err" && [ "$(wc -l < "$dir/err")" = 1 ]
[ ! -e "$dir/bad.h5" ]
echo "make_token_file: uniform val_loss $(val_loss "$dir/uniform.h5" 32768), text readable"
