#!/usr/bin/env python3
"""Where the host spends a training step's time, from a kernel_trace CSV recorded with
SY_KERNEL_TRACE_API=1 (bench/kernel_trace/kernel_trace.cpp).

  python3 bench/kernel_trace/host.py TRACE.csv [--marker adamw] [--skip 3] [--top 25]

Steps are cut as in gaps.py (at the end of each optimizer kernel on the GPU). On the host, the
time between two CUDA runtime calls is the program's own work; each call is named by the GPU
operation it enqueued (through CUPTI's correlation number) or by its runtime function. Prints,
summed a step: the host's time in runtime calls by function, the host's own work by the pair of
calls around it, and the GPU's idle gaps whose next operation was launched by the host during
the gap (the host was late: its work before that launch is on the critical path)."""
import argparse
import collections
import csv
import signal
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from gaps import short  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--marker", default="adamw")
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    api, gpu = [], []
    with open(args.trace, newline="") as f:
        for row in csv.DictReader(f):
            rec = (int(row["start_ns"]), int(row["end_ns"]), int(row["correlation"]))
            if row["kind"] == "api":
                api.append(rec + (row["name"],))
            else:
                label = short(row["name"]) if row["kind"] == "kernel" else row["kind"]
                gpu.append(rec + (label,))
    if not api:
        raise SystemExit("no api records: trace with SY_KERNEL_TRACE_API=1")
    api.sort()
    gpu.sort()
    launched = {c: n for s, e, c, n in gpu}
    marks = sorted(e for s, e, c, n in gpu if args.marker in n.lower())
    if len(marks) < args.skip + 2:
        raise SystemExit(f"{len(marks)} '{args.marker}' kernels: too few steps after --skip")
    lo, hi = marks[args.skip], marks[-1]
    steps = len(marks) - 1 - args.skip
    ms = lambda ns: ns / 1e6 / steps

    def label(call):
        s, e, c, n = call
        return f"{n}:{launched[c]}" if c in launched else n

    calls = [a for a in api if lo <= a[0] < hi]
    in_calls = collections.defaultdict(lambda: [0, 0])
    for s, e, c, n in calls:
        in_calls[n][0] += e - s
        in_calls[n][1] += 1
    own = collections.defaultdict(lambda: [0, 0])
    for a, b in zip(calls, calls[1:]):
        own[(label(a), label(b))][0] += max(0, b[0] - a[1])
        own[(label(a), label(b))][1] += 1
    span = hi - lo
    total_in = sum(t for t, n in in_calls.values())
    print(f"{steps} steps: {ms(span):.3f} ms a step; the host in runtime calls {ms(total_in):.3f}, "
          f"its own work {ms(sum(t for t, n in own.values())):.3f}")
    print(f"\nhost time in runtime calls (ms a step, calls a step), top {args.top}:")
    for n, (t, k) in sorted(in_calls.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {ms(t):7.3f}  {k / steps:6.1f}  {n}")
    print(f"\nthe host's own work between two calls (ms a step, times a step), top {args.top}:")
    for (a, b), (t, k) in sorted(own.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {ms(t):7.3f}  {k / steps:6.1f}  {a} -> {b}")

    # GPU idle gaps whose next operation's launch call began after the gap opened.
    call_of = {c: (s, e) for s, e, c, n in api}
    late = collections.defaultdict(lambda: [0, 0])
    ops = [g for g in gpu if g[1] > lo and g[0] < hi]
    run_end = lo
    for s, e, c, n in ops:
        if s > run_end and c in call_of and call_of[c][0] > run_end:
            late[n][0] += s - run_end
            late[n][1] += 1
        run_end = max(run_end, e)
    print(f"\nGPU idle gaps the host caused (the next op launched after the gap opened; ms a step, "
          f"gaps a step), top {args.top}:")
    for n, (t, k) in sorted(late.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {ms(t):7.3f}  {k / steps:6.1f}  {n}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
