#!/usr/bin/env python3
"""The tables of bench/gpu_step/run.sh: reads OUTDIR/results.jsonl (sy_bench_train's summary
lines and pytorch_model.py's mode lines) and OUTDIR/<config>.log (our per-op event profile),
prints the MoE profile, the initial-loss check and the throughput table last, and writes the
same to OUTDIR/summary.md. Exit status 1 when an initial-loss check failed.

    python3 bench/gpu_step/report.py OUTDIR [--tolerance 2e-2]
"""
import argparse
import json
import os
import sys

GIB = 1024.0 ** 3


def read_results(path):
    ours, torch_rows = {}, {}
    if not os.path.exists(path):
        return ours, torch_rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "mode" in row:
                torch_rows.setdefault(row["config"], []).append(row)
            elif "backend" in row:
                ours[row["config"]] = row
    return ours, torch_rows


def profile_block(log_path, max_rows=25):
    """Our per-op table from a sy_bench_train log (the lines after 'per-op profile')."""
    if not os.path.exists(log_path):
        return []
    lines, inside = [], False
    with open(log_path, errors="replace") as f:
        for line in f:
            if line.startswith("per-op profile"):
                inside, lines = True, [line.rstrip()]
                continue
            if inside:
                if not (line.startswith("|") or line.startswith("SY_CUDA_PROFILE")):
                    break
                lines.append(line.rstrip())
    return lines[: max_rows + 4]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def fmt_mem(row):
    if "peak_memory_bytes" in row:
        return f"{row['peak_memory_bytes'] / GIB:.1f} (held)"
    if "peak_memory_allocated_bytes" in row:
        return (f"{row['peak_memory_allocated_bytes'] / GIB:.1f} alloc / "
                f"{row['peak_memory_reserved_bytes'] / GIB:.1f} held")
    return "-"


def fmt_cv(row):
    if "load_cv_mean" not in row:
        return "-"
    return f"{row['load_cv_mean']:.3f} / {row['load_cv_max']:.3f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("--tolerance", type=float, default=2e-2,
                        help="relative tolerance of the initial loss and its parts, bf16")
    parser.add_argument("--configs", default="bench-moe bench-dense bench-fine")
    parser.add_argument("--profiles", default="bench-moe",
                        help="configs whose per-op profile is shown (all are in their logs)")
    args = parser.parse_args()
    ours, torch_rows = read_results(os.path.join(args.outdir, "results.jsonl"))
    configs = [c for c in args.configs.split() if c in ours or c in torch_rows]
    configs += sorted((set(ours) | set(torch_rows)) - set(configs))
    out = []
    failed = False

    for config in [c for c in configs if c in args.profiles.split()]:
        block = profile_block(os.path.join(args.outdir, config.replace("bench-", "") + ".log"))
        if block:
            out.append(f"### Switchyard per-op profile, {config} (CUDA events, no synchronisation)")
            out.extend(block)
            out.append("")

    out.append("### Initial loss: the same weights and tokens (step 0, before any update)")
    out.append(f"relative difference |torch - ours| / |ours|; tolerance {args.tolerance:g} "
               "(bf16) on the loss and its parts; shown, not checked: the gradient norms and the "
               "largest relative difference of the per-step losses over the steps both ran")
    out.append("")
    out.append("| config | torch mode | loss ours | loss torch | rel | lm rel | aux rel | z rel "
               "| grad norm ours / torch | steps: max rel | result |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        mine = ours.get(config)
        for row in torch_rows.get(config, []):
            if row.get("weights") != "init" or mine is None:
                continue
            parts = [("first_loss_exact", "first_loss"), ("first_lm_loss", "first_lm_loss"),
                     ("first_aux_loss", "first_aux_loss"), ("first_z_loss", "first_z_loss")]
            diffs = []
            for key_ours, key_torch in parts:
                a, b = row[key_torch], mine[key_ours]
                # aux and z are 0 in a dense model: compare absolutely there.
                diffs.append(rel(a, b) if abs(b) > 1e-6 else abs(a - b))
            # The trajectories: every step's loss on the same batches (shown, not checked).
            pairs = list(zip(mine.get("losses", []), row.get("losses", [])))
            steps = f"{max(rel(b, a) for a, b in pairs):.1e} ({len(pairs)})" if pairs else "-"
            ok = all(d <= args.tolerance for d in diffs)
            failed |= not ok
            out.append(f"| {config} | {row['mode']} | {mine['first_loss_exact']:.5f} | "
                       f"{row['first_loss']:.5f} | {diffs[0]:.1e} | {diffs[1]:.1e} | "
                       f"{diffs[2]:.1e} | {diffs[3]:.1e} | {mine['first_grad_norm']:.4f} / "
                       f"{row['first_grad_norm']:.4f} | {steps} | {'PASS' if ok else 'FAIL'} |")
    out.append("")

    out.append("### Training step, one GPU: Switchyard against PyTorch")
    out.append("tokens/s over the timed steps; MFU = tokens/s x (6 x active params + 6 L S D) "
               "/ 989 TFLOP/s; load cv = per MoE layer, std/mean of tokens per expert, averaged "
               "over the timed steps (mean / max over layers); x ours = tokens/s over ours; "
               "warm-up s = the untimed steps' wall time (ours: set-up + warm-up)")
    out.append("")
    out.append("| config | implementation | tokens/s | x ours | step ms | MFU | peak GiB | "
               "load cv mean / max | first loss | warm-up s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        mine = ours.get(config)
        rows = ([("switchyard", mine)] if mine else []) + \
            [("torch " + r["mode"], r) for r in torch_rows.get(config, [])]
        for name, row in rows:
            ratio = f"{row['tokens_per_s'] / mine['tokens_per_s']:.2f}" if mine else "-"
            warm = f"{row['warmup_s']:.0f}" if "warmup_s" in row else "-"
            if "setup_s" in row:  # ours: the model's set-up before its first step, then warm-up
                warm = f"{row['setup_s']:.0f} + {warm}"
            out.append(f"| {config} | {name} | {row['tokens_per_s'] / 1e3:.1f}k | {ratio} | "
                       f"{row['step_ms']:.1f} | {row['mfu'] * 100:.1f}% | {fmt_mem(row)} | "
                       f"{fmt_cv(row)} | {row['first_loss']:.4f} | {warm} |")
    text = "\n".join(out) + "\n"
    with open(os.path.join(args.outdir, "summary.md"), "a") as f:
        f.write(text)
    sys.stdout.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
