#!/usr/bin/env bash
# The expert FFN benchmark: expert_ffn_bench (ours, through the Backend) and expert_ffn_torch.py
# (PyTorch on the same GPU), then one table per case: the dense ceiling, our cublas loop, our
# best grouped kernel, torch's faster way, and their ratios (all TFLOP/s of 18*T*K*D*F).
#   Usage: bash bench/expert_ffn/run.sh BUILD_DIR OUTDIR [case ...]     (cases: coarse fine skewed)
# Logs: OUTDIR/expert_ffn_bench.log, OUTDIR/expert_ffn_torch.log, OUTDIR/expert_ffn_table.txt.
# SY_FFN_PROFILE=1: our variants' per-op event profiles too, in expert_ffn_bench.log.
# SY_FFN_BF16_GRADS=1: our weight gradients (and the ceiling's) in bf16, written once, as
# training's run.weight_grads auto writes them and as PyTorch's bf16 weights get theirs.
set -uo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/../../launch/lib.sh"
build=${1:?usage: bash bench/expert_ffn/run.sh BUILD_DIR OUTDIR [case ...]}
out=${2:?usage: bash bench/expert_ffn/run.sh BUILD_DIR OUTDIR [case ...]}
shift 2
build=$(cd "$build" 2> /dev/null && pwd || echo "$build")  # sy_init moves to the repository root
sy_init "$out"
out=$sy_out

profile=()
[ "${SY_FFN_PROFILE:-0}" = 1 ] && profile=(--profile)
[ "${SY_FFN_BF16_GRADS:-0}" = 1 ] && profile+=(--bf16-grads)
sy_step expert_ffn_bench "$build/expert_ffn_bench" "${profile[@]}" "$@"
bench_rc=$?
[ "$bench_rc" -eq 0 ] || sy_dry || tail -20 "$out/expert_ffn_bench.log"
if python3 -c "import torch" > /dev/null 2>&1; then
  sy_step expert_ffn_torch python3 bench/expert_ffn/expert_ffn_torch.py "$@" ||
    sy_dry || tail -20 "$out/expert_ffn_torch.log"
else
  echo "no PyTorch here: the torch column stays empty"
  sy_dry || echo "no PyTorch here: the torch column stays empty" > "$out/expert_ffn_torch.log"
fi
sy_dry && exit 0

python3 - "$out/expert_ffn_bench.log" "$out/expert_ffn_torch.log" <<'PY' | tee "$out/expert_ffn_table.txt"
import math, re, sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if not line.startswith("RESULT "):
            continue
        fields = dict(f.split("=", 1) for f in line.split()[1:])
        rows.setdefault(fields["case"], {})[fields["variant"]] = fields
def tf(d, key):
    try:
        v = float(d[key]["tflops"])
        return v if math.isfinite(v) else None
    except (KeyError, ValueError):
        return None
def cell(v):
    return f"{v:8.1f}" if v is not None else f"{'-':>8}"
def ratio(a, b):
    return f"{a / b:6.2f}x" if a is not None and b else f"{'-':>7}"
print("TFLOP/s of the expert FFN, forward + backward, bf16 (gather, SwiGLU, gating, scatter included;")
print("the ceiling is the 9 GEMMs as one dense cuBLAS chain). err: rel L2 of the grouped run vs the loop.")
ours = open(sys.argv[1], errors="replace").read()
print("Our weight gradients (and the ceiling's): " +
      ("bf16, written once." if "weight gradients bf16" in ours else "fp32."))
print(f"| {'case':8} | {'ceiling':>8} | {'cublas loop':>11} | {'grouped':>8} | {'kernel':6} | {'err':>8} | "
      f"{'torch':>8} | {'torch way':10} | {'grp/loop':>8} | {'grp/torch':>9} | {'grp/ceil':>8} |")
print("|" + "|".join("-" * w for w in (10, 10, 13, 10, 8, 10, 10, 12, 10, 11, 10)) + "|")
for case in ("coarse", "fine", "skewed"):
    d = rows.get(case)
    if not d:
        continue
    grouped = {k: tf(d, k) for k in d if k.startswith("grouped:")}
    best = max((k for k in grouped if grouped[k] is not None), key=lambda k: grouped[k], default=None)
    g = grouped.get(best) if best else None
    err = d[best]["err"] if best else "-"
    torch_way = d.get("torch", {}).get("way", "-")
    loop, ceil, torch = tf(d, "cublas_loop"), tf(d, "ceiling"), tf(d, "torch")
    print(f"| {case:8} | {cell(ceil)} | {cell(loop):>11} | {cell(g)} | {(best or '-').replace('grouped:', ''):6} | "
          f"{err:>8} | {cell(torch)} | {torch_way:10} | {ratio(g, loop):>8} | {ratio(g, torch):>9} | {ratio(g, ceil):>8} |")
PY
exit "$bench_rc"
