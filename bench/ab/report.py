#!/usr/bin/env python3
"""The report of bench/ab/run.sh: reads the "AB <side> <round> {json}" lines that it wrote into
OUTDIR/<config>.log (sy_bench_train's summary line of each run) and the "AB <side> <round> <op>
<ms> ms" lines of OUTDIR/membound.log, prints one table per config (each side's step time per
round, their means, tokens/s, peak memory, new against base) and whether the losses of the two
sides are equal (where not, how far apart their first runs are), and writes the same to
OUTDIR/ab.md.

    python3 bench/ab/report.py OUTDIR [--require-equal]

Exit status: 1 when a config has no run of one side, or with --require-equal when the two
sides' losses differ.
"""
import argparse
import glob
import json
import os
import re
import sys

GIB = 1024.0 ** 3
SIDES = ("base", "new")


def read_runs(log_path):
    """{side: [(round, summary dict), ...]} from one config's log."""
    runs = {side: [] for side in SIDES}
    with open(log_path, errors="replace") as f:
        for line in f:
            match = re.match(r"^AB (base|new) (\d+) (\{.*\})\s*$", line)
            if match:
                runs[match.group(1)].append((int(match.group(2)), json.loads(match.group(3))))
    return runs


def read_membound(log_path):
    """{op: {side: [ms, ...]}} from the memory_bound_bench lines."""
    ops = {}
    if not os.path.exists(log_path):
        return ops
    with open(log_path, errors="replace") as f:
        for line in f:
            match = re.match(r"^AB (base|new) \d+ (.+?)\s+([0-9.]+) ms\s*$", line)
            if match:
                side_ms = ops.setdefault(match.group(2).strip(), {s: [] for s in SIDES})
                side_ms[match.group(1)].append(float(match.group(3)))
    return ops


def mean(values):
    return sum(values) / len(values) if values else float("nan")


def exact(runs):
    # Whether every run printed its gradient norms, and so every digit (sy_bench_train since
    # 2026-12-04); else the sides compare to the 6 decimals that older builds printed.
    return all("grad_norms" in r[1] for side in SIDES for r in runs[side])


def losses_of(summary, every_digit):
    # The first loss, then every step's loss (and gradient norm, to the bit).
    losses = list(summary.get("losses", []))
    if not every_digit:
        return [summary.get("first_loss_exact")] + [round(x, 6) for x in losses]
    return [summary.get("first_loss_exact")] + losses + list(summary.get("grad_norms", []))


def largest_relative(a, b):
    """The largest |a - b| / |b| over paired values (0 for none)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return max((abs(x - y) / max(abs(y), 1e-300) for x, y in pairs), default=0.0)


def how_far(base, new):
    # How far apart two sides' first runs are, for a change that is not bitwise neutral: the
    # first loss (before any update), every step's loss, every step's gradient norm.
    first = largest_relative([new.get("first_loss_exact")], [base.get("first_loss_exact")])
    losses = largest_relative(new.get("losses", []), base.get("losses", []))
    norms = largest_relative(new.get("grad_norms", []), base.get("grad_norms", []))
    return (f"; relative difference: first loss {first:.1e}, losses up to {losses:.1e}, "
            f"grad norms up to {norms:.1e}")


def config_table(name, runs):
    lines = [f"### {name}", "",
             "| side | step ms per round | mean step ms | tokens/s | peak GiB |",
             "|---|---|---|---|---|"]
    means = {}
    for side in SIDES:
        rows = sorted(runs[side], key=lambda r: r[0])
        steps = [r[1]["step_ms"] for r in rows]
        tokens = mean([r[1]["tokens_per_s"] for r in rows])
        peak = max((r[1].get("peak_memory_bytes", 0) for r in rows), default=0) / GIB
        means[side] = mean(steps)
        lines.append(f"| {side} | {', '.join(f'{s:.3f}' for s in steps)} | {means[side]:.3f} | "
                     f"{tokens:,.0f} | {peak:.2f} |")
    every_digit = exact(runs)
    all_losses = {side: [losses_of(r[1], every_digit) for r in runs[side]] for side in SIDES}
    repeat = {side: all(l == all_losses[side][0] for l in all_losses[side]) for side in SIDES}
    equal = repeat["base"] and repeat["new"] and all_losses["base"][0] == all_losses["new"][0]
    change = (means["new"] / means["base"] - 1.0) * 100.0
    compared = "losses and grad norms" if every_digit else "losses (6 decimals)"
    first_run = {side: min(runs[side], key=lambda r: r[0])[1] for side in SIDES}
    apart = "" if equal else how_far(first_run["base"], first_run["new"])
    lines += ["", f"new against base: {means['new'] - means['base']:+.3f} ms a step "
              f"({change:+.2f}%); {compared} {'equal' if equal else 'DIFFERENT'} "
              f"(each side repeats itself: base {repeat['base']}, new {repeat['new']}){apart}",
              ""]
    return lines, equal


def membound_table(ops):
    lines = ["### memory_bound_bench", "", "| op | base ms | new ms | new / base |",
             "|---|---|---|---|"]
    for op, side_ms in ops.items():
        base, new = mean(side_ms["base"]), mean(side_ms["new"])
        lines.append(f"| {op} | {', '.join(f'{v:.4f}' for v in side_ms['base'])} | "
                     f"{', '.join(f'{v:.4f}' for v in side_ms['new'])} | {new / base:.3f} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--require-equal", action="store_true",
                        help="exit 1 when the two sides' losses differ")
    args = parser.parse_args()
    lines, status = ["## A/B: the working tree (new) against the baseline (base)", ""], 0
    found = False
    for log in sorted(glob.glob(os.path.join(args.outdir, "*.log"))):
        runs = read_runs(log)
        if not runs["base"] and not runs["new"]:
            continue
        found = True
        name = os.path.basename(log)[:-4]
        if not runs["base"] or not runs["new"]:
            lines += [f"### {name}", "", "a side has no run: see the log", ""]
            status = 1
            continue
        table, equal = config_table(name, runs)
        lines += table
        if args.require_equal and not equal:
            status = 1
    ops = read_membound(os.path.join(args.outdir, "membound.log"))
    if ops:
        lines += membound_table(ops)
    if not found:
        lines.append("no runs found")
        status = 1
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.outdir, "ab.md"), "w") as f:
        f.write(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
