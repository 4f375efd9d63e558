#!/usr/bin/env python3
"""GPU busy and idle time per training step from a kernel_trace CSV (bench/kernel_trace).

  python3 bench/kernel_trace/gaps.py TRACE.csv [--marker adamw] [--skip 3] [--top 20]

Steps are cut at the end of each kernel whose name holds --marker (the optimizer pass, once a
step); the first --skip of them (warm-up) are dropped. Over the steps that remain it prints the
span and the busy time a step (the union of kernels, copies and memsets), the device-to-host
copies a step (each a host synchronisation here), the idle gaps summed by the op that ends before
them and the one that starts after them (a gap after "memcpy DtoH" is a host synchronisation's
round trip), and the GPU time by kernel."""
import argparse
import collections
import csv
import re
import signal


def short(name):
    """A kernel's name without its namespaces, template arguments and parameter list."""
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    base = "".join(out).strip()
    base = re.sub(r"^(void|static)\s+", "", base)
    return base.split("::")[-1] or name[:60]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--marker", default="adamw")
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()

    ops = []
    with open(args.trace, newline="") as f:
        for row in csv.DictReader(f):
            if row["kind"] == "api":  # host-side records: bench/kernel_trace/host.py
                continue
            label = short(row["name"]) if row["kind"] == "kernel" else row["kind"]
            ops.append((int(row["start_ns"]), int(row["end_ns"]), label))
    ops.sort()
    marks = sorted(end for start, end, label in ops if args.marker in label.lower())
    if len(marks) < args.skip + 2:
        raise SystemExit(f"{len(marks)} '{args.marker}' kernels: too few steps after --skip")
    lo, hi = marks[args.skip], marks[-1]
    steps = len(marks) - 1 - args.skip
    window = [(max(s, lo), min(e, hi), n) for s, e, n in ops if e > lo and s < hi]

    busy, gaps = 0, collections.defaultdict(lambda: [0, 0])
    # The window opens at the end of a marker kernel: the first gap follows it.
    opener = next(n for s, e, n in ops if e == lo and args.marker in n.lower())
    run_start, run_end, last = lo, lo, opener
    for s, e, n in window:
        if s > run_end:
            busy += run_end - run_start
            key = (last, n)
            gaps[key][0] += s - run_end
            gaps[key][1] += 1
            run_start = None
        if run_start is None:
            run_start, run_end = s, e
        if e >= run_end:
            run_end, last = e, n
    busy += run_end - run_start
    span = hi - lo
    ms = lambda ns: ns / 1e6 / steps
    print(f"{steps} steps: {ms(span):.3f} ms a step, GPU busy {ms(busy):.3f}, "
          f"idle {ms(span - busy):.3f} ({100 * (span - busy) / span:.1f}%)")
    # Each device-to-host copy is, in this codebase, a host synchronisation's round trip.
    copies = sum(1 for s, e, n in window if n == "memcpy DtoH")
    print(f"device-to-host copies a step: {copies / steps:.1f}")
    print(f"\nidle gaps by the op before and after (ms a step, gaps a step), top {args.top}:")
    for (before, after), (t, n) in sorted(gaps.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {ms(t):7.3f}  {n / steps:5.1f}  {before} -> {after}")

    by_name = collections.defaultdict(lambda: [0, 0])
    for s, e, n in window:
        by_name[n][0] += e - s
        by_name[n][1] += 1
    print(f"\nGPU time by op (ms a step, calls a step), top {2 * args.top}:")
    for n, (t, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:2 * args.top]:
        print(f"  {ms(t):7.3f}  {c / steps:6.1f}  {n}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    main()
