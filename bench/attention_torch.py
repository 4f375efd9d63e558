"""PyTorch's fused causal attention (SDPA, flash backend) on the attention_bench shape, for
comparison with bench/attention_bench.cu: median of --iters CUDA-event timings after --warmup,
TFLOP/s with the same FLOP counts (forward 4 B H S^2 Dh / 2, backward 2.5x).

    python3 bench/attention_torch.py [--batch 4 --seq 2048 --heads 16 --head-dim 128]
"""
import argparse
import statistics
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("attention_torch: torch is not installed; skipped")
        return 0
    if not torch.cuda.is_available():
        print("attention_torch: no CUDA device; skipped")
        return 0
    B, S, H, Dh = args.batch, args.seq, args.heads, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, S, Dh, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)

    def timed(fn):
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.iters):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    except ImportError:  # older torch
        ctx = lambda: torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False,
                                                     enable_mem_efficient=False)
    with ctx():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        bwd = timed(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    flop = 4.0 * B * H * S * S * Dh / 2
    print(f"torch {torch.__version__} SDPA flash, B={B} S={S} H={H} Dh={Dh} bf16, "
          f"{torch.cuda.get_device_name()} (median of {args.iters})")
    print("| kernel | pass | ms | TFLOP/s |\n|---|---|---|---|")
    print(f"| torch sdpa | forward | {fwd:.3f} | {flop / (fwd * 1e-3) / 1e12:.1f} |")
    print(f"| torch sdpa | backward | {bwd:.3f} | {2.5 * flop / (bwd * 1e-3) / 1e12:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
