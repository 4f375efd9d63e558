"""What fusing the q, k and v projections into one GEMM could save, before building it.

The attention projections of the benchmark configs (configs/bench/*.yaml: T = 8192 tokens,
D = 2048, 16 heads of 128, no GQA) as cuBLAS runs them, through torch (the same cuBLAS/cuBLASLt
the CUDA backend calls), bf16 in, fp32 accumulate:
  forward   three x[T, D] @ W[D, D]                 vs one x @ Wqkv[D, 3D]
  dgrad     three dY[T, D] @ W^T summed into dx     vs one dYqkv[T, 3D] @ Wqkv^T[3D, D]
  wgrad     three x^T @ dY -> f32 [D, D]            vs one x^T @ dYqkv -> f32 [D, 3D]
Median of 50 (CUDA events) of each form, times 8 layers = one step's share.
Usage: python3 bench/qkv_fusion_probe.py
"""
import statistics

import torch


def mm_f32(a, b):
    """a @ b with an fp32 result, as the weight gradients are kept (bf16 when this torch lacks
    out_dtype: the same GEMM but for the store)."""
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except TypeError:
        return torch.mm(a, b)


def timed(fn, iters=50, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    torch.manual_seed(0)
    T, D, layers = 8192, 2048, 8
    bf = torch.bfloat16
    x = torch.randn(T, D, device="cuda", dtype=bf)
    w = [torch.randn(D, D, device="cuda", dtype=bf) * 0.02 for _ in range(3)]
    wqkv = torch.cat(w, dim=1).contiguous()                       # [D, 3D]
    dy = [torch.randn(T, D, device="cuda", dtype=bf) for _ in range(3)]
    dyqkv = torch.cat(dy, dim=1).contiguous()                      # [T, 3D]
    dx = torch.empty(T, D, device="cuda", dtype=bf)
    out = [torch.empty(T, D, device="cuda", dtype=bf) for _ in range(3)]
    out_qkv = torch.empty(T, 3 * D, device="cuda", dtype=bf)

    def forward_apart():
        for k in range(3):
            torch.matmul(x, w[k], out=out[k])

    def forward_fused():
        torch.matmul(x, wqkv, out=out_qkv)

    def dgrad_apart():
        torch.matmul(dy[0], w[0].t(), out=dx)
        dx.addmm_(dy[1], w[1].t())
        dx.addmm_(dy[2], w[2].t())

    def dgrad_fused():
        torch.matmul(dyqkv, wqkv.t(), out=dx)

    def wgrad_apart():
        for k in range(3):
            mm_f32(x.t(), dy[k])

    def wgrad_fused():
        mm_f32(x.t(), dyqkv)

    flops = 2 * T * D * D * 3
    print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)
    print("| pass | three GEMMs ms | one GEMM ms | saved ms x 8 layers | TFLOP/s three / one |")
    print("|---|---|---|---|---|")
    total = 0.0
    for name, apart, fused in [("forward", forward_apart, forward_fused),
                               ("dgrad", dgrad_apart, dgrad_fused),
                               ("wgrad (f32 out)", wgrad_apart, wgrad_fused)]:
        a, f = timed(apart), timed(fused)
        total += (a - f) * layers
        print("| %s | %.3f | %.3f | %.2f | %.0f / %.0f |" % (
            name, a, f, (a - f) * layers, flops / a / 1e9, flops / f / 1e9))
    print("saved a step (8 layers, all passes): %.2f ms" % total)


if __name__ == "__main__":
    main()
