#!/usr/bin/env python3
"""The PyTorch baseline for the CPU training benchmark: the example config's model (SPEC.md
sections 1-2: RMSNorm, rotary attention, top-2 dropless MoE with SwiGLU experts, Switch aux loss
and z-loss, tied embeddings) trained with AdamW on the same token file. Prints tokens/s and the
loss. Usage: python3 bench/pytorch_baseline.py corpora/brown.h5 STEPS [THREADS]
Needs Debian's python3-torch and python3-h5py (run with /usr/bin/python3)."""
import math
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F

V, S, D, L, H, E, K, FE, B = 256, 128, 128, 4, 4, 8, 2, 256, 16
LR, MIN_LR, WARMUP, WD, CLIP, AUX, Z = 3e-3, 3e-4, 50, 0.1, 1.0, 0.01, 0.001


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g


def rotary(x):  # x: [B, H, S, Dh], rotate-half
    dh = x.shape[-1]
    freqs = 10000.0 ** (-torch.arange(0, dh // 2, dtype=torch.float32) * 2 / dh)
    angles = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * freqs[None, :]
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., : dh // 2], x[..., dh // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        p = lambda *shape: torch.nn.Parameter(torch.randn(*shape) * 0.02)
        self.emb = p(V, D)
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            layer = torch.nn.Module()
            layer.attn_norm = torch.nn.Parameter(torch.ones(D))
            layer.ffn_norm = torch.nn.Parameter(torch.ones(D))
            layer.wq, layer.wk, layer.wv, layer.wo = p(D, D), p(D, D), p(D, D), p(D, D)
            layer.router = p(D, E)
            layer.w1, layer.w3, layer.w2 = p(E, D, FE), p(E, D, FE), p(E, FE, D)
            self.layers.append(layer)
        self.final_norm = torch.nn.Parameter(torch.ones(D))

    def moe(self, layer, u):  # u: [T, D]
        logits = u @ layer.router
        probs = logits.softmax(-1)
        top_vals, top_idx = probs.topk(K, dim=-1)
        gates = top_vals / top_vals.sum(-1, keepdim=True)
        out = torch.zeros_like(u)
        for e in range(E):
            token, slot = (top_idx == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            x = u[token]
            y = (F.silu(x @ layer.w1[e]) * (x @ layer.w3[e])) @ layer.w2[e]
            out.index_add_(0, token, y * gates[token, slot, None])
        f = torch.bincount(top_idx.flatten(), minlength=E).float() / top_idx.numel()
        aux = E * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return out, aux, z

    def forward(self, tokens, targets):
        x = self.emb[tokens]  # [B, S, D]
        aux_total, z_total = 0.0, 0.0
        mask = torch.full((S, S), float("-inf")).triu(1)
        for layer in self.layers:
            h = rmsnorm(x, layer.attn_norm)
            q, k, v = ((h @ w).view(B, S, H, D // H).transpose(1, 2) for w in (layer.wq, layer.wk, layer.wv))
            q, k = rotary(q), rotary(k)
            att = ((q @ k.transpose(-1, -2)) / math.sqrt(D // H) + mask).softmax(-1)
            x = x + (att @ v).transpose(1, 2).reshape(B, S, D) @ layer.wo
            out, aux, z = self.moe(layer, rmsnorm(x, layer.ffn_norm).view(B * S, D))
            x = x + out.view(B, S, D)
            aux_total, z_total = aux_total + aux, z_total + z
        logits = rmsnorm(x, self.final_norm) @ self.emb.T
        lm = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        return lm + AUX * aux_total / L + Z * z_total / L, lm


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    torch.manual_seed(0)
    with h5py.File(path, "r") as f:
        train = torch.from_numpy(np.asarray(f["train"][:], dtype=np.int64))
    model = Model()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)
    total = 800
    start = time.time()
    timed_from, timed_start = min(5, steps - 1), None
    for step in range(steps):
        if step == timed_from:
            timed_start = time.time()
        lr = LR * (step + 1) / WARMUP if step < WARMUP else \
            MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * (step - WARMUP) / (total - WARMUP)))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = torch.randint(0, len(train) - S - 1, (B,))
        idx = offsets[:, None] + torch.arange(S + 1)[None, :]
        batch = train[idx]
        loss, lm = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        if (step + 1) % 10 == 0 or step + 1 == steps:
            print(f"step {step + 1} loss {loss.item():.4f} lm {lm.item():.4f}", flush=True)
    elapsed = time.time() - timed_start
    tokens_per_s = (steps - timed_from) * B * S / elapsed
    print(f"pytorch {torch.__version__}: {steps} steps, {tokens_per_s:.0f} tokens/s "
          f"(steps {timed_from + 1}-{steps}), total {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
