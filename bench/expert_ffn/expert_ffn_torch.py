#!/usr/bin/env python3
"""The expert FFN of expert_ffn_bench.cpp in PyTorch, on the same GPU, for comparison.

Same cases, same routing (the same splitmix64 generator), bf16: gather (index_select of the
tokens in expert order), SwiGLU experts, gating and scatter (index_add_ of gate-weighted rows),
forward and backward (autograd, dout fixed). Two ways to run the experts:
  loop        one matmul per expert and projection
  grouped_mm  torch._grouped_mm over all experts (segments padded to 16 rows, as torchtitan does
              for its alignment rule; pad rows are zero and carry no gradient)
Times: median of 20 runs with CUDA events after 3 warm-up runs; TFLOP/s count 18*T*K*D*F.
Prints one "RESULT case=... variant=torch:<way> ms=... tflops=..." line per way, and the faster
one as variant=torch. Usage: expert_ffn_torch.py [case ...]
"""
import math
import sys

import torch
import torch.nn.functional as F

CASES = {
    "coarse": dict(E=8, K=2, D=2048, F=8192, T=16384, zipf=False),
    "fine": dict(E=64, K=8, D=2048, F=1024, T=16384, zipf=False),
    "skewed": dict(E=8, K=2, D=2048, F=8192, T=16384, zipf=True),
}
MASK = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def uniform(i):
    return (splitmix64(i) >> 11) * 2.0**-53


def routing(E, K, T, zipf, **_):
    """expert[t, k] and gates[t, k], as make_routing in expert_ffn_bench.cpp."""
    weight = [(e + 1) ** -1.2 for e in range(E)]
    expert = []
    for t in range(T):
        taken = [False] * E
        for k in range(K):
            a = t * K + k
            if not zipf:
                expert.append(a % E)
                continue
            total = sum(weight[e] for e in range(E) if not taken[e])
            u = uniform(2 * a) * total
            pick = -1
            for e in range(E):
                if taken[e]:
                    continue
                pick = e
                u -= weight[e]
                if u < 0:
                    break
            taken[pick] = True
            expert.append(pick)
    gates = []
    for t in range(T):
        raw = [0.5 + uniform(2 * (t * K + k) + 1) for k in range(K)]
        s = sum(raw)
        gates.extend(r / s for r in raw)
    return expert, gates


def median_ms(step, warmup=3, runs=20):
    for _ in range(warmup):
        step()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(runs)]
    for start, stop in events:
        start.record()
        step()
        stop.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(stop) for start, stop in events)
    return 0.5 * (times[(runs - 1) // 2] + times[runs // 2])


def run_case(name, c):
    E, K, D, Fh, T = c["E"], c["K"], c["D"], c["F"], c["T"]
    dev = torch.device("cuda")
    expert, gates = routing(**c)
    expert = torch.tensor(expert, dtype=torch.int64, device=dev)            # [T*K]
    gates = torch.tensor(gates, dtype=torch.float32, device=dev).view(T, K)
    # Rows grouped by expert, within an expert by assignment (a stable sort).
    order = torch.sort(expert, stable=True).indices                          # row -> assignment
    counts = torch.bincount(expert, minlength=E)
    token_of_row = order // K
    gate_of_row = gates.view(-1)[order]

    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(T, D, device=dev, dtype=torch.bfloat16, generator=gen).requires_grad_()
    dout = torch.randn(T, D, device=dev, dtype=torch.bfloat16, generator=gen)
    # Weights as nn.Linear keeps them ([out, in]); the grouped GEMMs read their transposes.
    w1 = (0.02 * torch.randn(E, Fh, D, device=dev, generator=gen)).bfloat16().requires_grad_()
    w3 = (0.02 * torch.randn(E, Fh, D, device=dev, generator=gen)).bfloat16().requires_grad_()
    w2 = (0.02 * torch.randn(E, D, Fh, device=dev, generator=gen)).bfloat16().requires_grad_()
    params = [x, w1, w3, w2]

    counts_host = counts.tolist()
    starts = [0]
    for n in counts_host:
        starts.append(starts[-1] + n)

    def combine(y):  # gate weighting and scatter back to the tokens, in fp32 then bf16
        out = torch.zeros(T, D, device=dev, dtype=torch.float32)
        out.index_add_(0, token_of_row, y.float() * gate_of_row[:, None])
        return out.bfloat16()

    def loop_step():
        for p in params:
            p.grad = None
        xp = x.index_select(0, token_of_row)
        ys = []
        for e in range(E):
            s = xp[starts[e]:starts[e + 1]]
            h = F.silu(s @ w1[e].t()) * (s @ w3[e].t())
            ys.append(h @ w2[e].t())
        combine(torch.cat(ys)).backward(dout)

    # grouped_mm: each segment padded to a multiple of 16 rows.
    padded = [(n + 15) // 16 * 16 for n in counts_host]
    pad_starts = [0]
    for n in padded:
        pad_starts.append(pad_starts[-1] + n)
    dest = torch.cat([torch.arange(pad_starts[e], pad_starts[e] + counts_host[e], device=dev)
                      for e in range(E)])                                     # row -> padded row
    offs = torch.tensor(pad_starts[1:], dtype=torch.int32, device=dev)

    def grouped_step():
        for p in params:
            p.grad = None
        xp = torch.zeros(pad_starts[-1], D, device=dev, dtype=torch.bfloat16)
        xp = xp.index_copy(0, dest, x.index_select(0, token_of_row))
        h1 = torch._grouped_mm(xp, w1.transpose(-2, -1), offs=offs)
        h3 = torch._grouped_mm(xp, w3.transpose(-2, -1), offs=offs)
        y = torch._grouped_mm(F.silu(h1) * h3, w2.transpose(-2, -1), offs=offs)
        combine(y.index_select(0, dest)).backward(dout)

    flops = 18.0 * T * K * D * Fh
    results = {}
    for way, step in (("loop", loop_step), ("grouped_mm", grouped_step)):
        try:
            ms = median_ms(step)
        except Exception as error:  # an older torch without _grouped_mm, or its backward
            print(f"torch {way}: unavailable ({type(error).__name__}: {str(error).splitlines()[0]})")
            continue
        results[way] = ms
        print(f"RESULT case={name} variant=torch:{way} ms={ms:.4f} tflops={flops / ms * 1e-9:.2f}")
    if results:
        way = min(results, key=results.get)
        ms = results[way]
        print(f"RESULT case={name} variant=torch ms={ms:.4f} tflops={flops / ms * 1e-9:.2f} "
              f"way={way}")
    sys.stdout.flush()


def main():
    if not torch.cuda.is_available():
        print("expert_ffn_torch: no CUDA device visible", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    wanted = sys.argv[1:] or list(CASES)
    for name in wanted:
        run_case(name, CASES[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
