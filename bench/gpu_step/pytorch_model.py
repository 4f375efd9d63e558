#!/usr/bin/env python3
"""Switchyard's model and training step in PyTorch, for bench/gpu_step/run.sh: the same
semantics as model/ (docs/model.md), timed on the same token batches, optionally from the same
initial weights.

    python3 pytorch_model.py TOKENS.bin [--init INIT.h5] [--modes eager,compiled]
        [--experts auto|grouped|loop|both] [--warmup 3] [--steps 10] [--json OUT.jsonl]
        [--device cuda|cpu] [--dtype bf16|fp32]

TOKENS.bin and TOKENS.bin.json come from `sy_bench_train CONFIG --tokens TOKENS.bin`: every
step's batch (int32 [step][micro][inputs, targets][B*S]) and the resolved settings (model, moe,
train). INIT.h5 from `sy_bench_train ... --save-init INIT.h5` (docs/checkpoint.md: /model/<path>
datasets, fp32, [in, out]); without it the weights are drawn like ours (N(0, 0.02), gains 1)
but from torch's generator.

The model, as ours:
- x = embedding[token]; per layer x += attn(rmsnorm(x)); x += ffn(rmsnorm(x)); then rmsnorm,
  logits = x @ embedding^T (tied) or x @ lm_head; RMSNorm x / sqrt(mean x^2 + 1e-5) * gain.
- Attention: separate q, k, v, o weights [D, D]; rotate-half rotary on q and k, theta 10000,
  frequency i of head width Dh = theta^(-2i/Dh); causal softmax with scale 1/sqrt(Dh).
- FFN: (silu(u @ w1) * (u @ w3)) @ w2; MoE experts the same, stacked [E, D, F] and [E, F, D].
- Router (fp32): logits = u @ router, p = softmax, the K largest logits (largest first), gates
  p / sum of the selected p when normalize_topk, else p; dropless.
  aux = E * sum_e f_e * mean_t p[t, e] (f_e: the fraction of the T*K choices that chose e, no
  gradient), z = mean_t logsumexp(logits_t)^2.
- loss = mean cross-entropy + aux_coef * mean over MoE layers of aux + z_coef * mean of z.
- AdamW (decoupled decay on tensors of >= 2 dimensions), the global-norm clip
  min(1, clip / (norm + 1e-6)), LR linear warm-up then cosine (optim/lr_schedule.cpp).
Precision (bf16): activations and GEMM operands bf16 (autocast, or explicit casts for the
grouped GEMMs), fp32 master weights, AdamW state, norms' statistics, the router, the losses.

Modes: eager, and compiled: torch.compile per region (one graph for a transformer block, reused
by every layer since the weights are its arguments, and one for the head and loss: the same code
as eager, compiled in seconds rather than minutes); the backward follows from the compiled graphs;
the optimizer is fused AdamW in both.
Experts: torch._grouped_mm over expert segments (one kernel per projection) where it exists and
runs, else a loop over experts; `--experts both` times both in eager. Prints one JSON line per
timed mode, also appended to --json.
"""
import argparse
import json
import math
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

RMS_EPS = 1e-5
ROPE_THETA = 10000.0
PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16, as in sy_bench_train


def lr_at(cfg, step):
    """optim/lr_schedule.cpp: linear warm-up to lr, then cosine to min_lr (clamped)."""
    warmup, lr, min_lr = cfg["warmup_steps"], cfg["lr"], cfg["min_lr"]
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = cfg["train_steps"] - max(warmup, 0)
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - max(warmup, 0)) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def grouped_mm_works(device):
    """torch._grouped_mm exists here and its forward and gradients match plain matmuls, an
    empty group included."""
    if device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(48, 32, device=device, generator=g).bfloat16()
        w = torch.randn(3, 32, 16, device=device, generator=g).bfloat16()
        dy = torch.randn(48, 16, device=device, generator=g).bfloat16()
        offs = torch.tensor([13, 13, 48], device=device, dtype=torch.int32)  # 13, 0, 35 rows
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = torch._grouped_mm(xg, wg, offs=offs)
        y.backward(dy)
        xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
        ref = torch.cat([xr[:13] @ wr[0], xr[13:] @ wr[2]])
        ref.backward(dy.float())
        close = lambda a, b: bool(torch.allclose(a.float(), b.float(), rtol=3e-2, atol=3e-2))
        return close(y, ref) and close(xg.grad, xr.grad) and close(wg.grad, wr.grad)
    except Exception as error:  # not built for this GPU, or no autograd formula
        print(f"torch._grouped_mm unavailable: {type(error).__name__}: {error}", file=sys.stderr)
        return False


class Model(torch.nn.Module):
    """Parameters named and shaped as our checkpoint's /model/<path> ([in, out])."""

    def __init__(self, cfg, device):
        super().__init__()
        self.cfg = cfg
        V, D, L = cfg["vocab_size"], cfg["d_model"], cfg["n_layers"]
        E, F_e, F_d = cfg["num_experts"], cfg["expert_hidden"], cfg["ffn_hidden"]
        self.paths = {}  # our path -> parameter

        def param(path, *shape, gain=False):
            value = torch.ones(shape, device=device) if gain else \
                torch.randn(shape, device=device) * 0.02
            p = torch.nn.Parameter(value)
            self.register_parameter(path.replace("/", "__"), p)
            self.paths[path] = p
            return p

        self.embedding = param("embedding", V, D)
        self.layers = []
        for l in range(L):
            prefix = f"layers/{l}/"
            layer = {"attn_norm": param(prefix + "attn_norm", D, gain=True)}
            for w in ("wq", "wk", "wv", "wo"):
                layer[w] = param(prefix + "attn/" + w, D, D)
            layer["ffn_norm"] = param(prefix + "ffn_norm", D, gain=True)
            layer["moe"] = bool(cfg["moe_layers"][l])
            if layer["moe"]:
                layer["router"] = param(prefix + "moe/router", D, E)
                layer["w1"] = param(prefix + "moe/experts/w1", E, D, F_e)
                layer["w3"] = param(prefix + "moe/experts/w3", E, D, F_e)
                layer["w2"] = param(prefix + "moe/experts/w2", E, F_e, D)
            else:
                layer["w1"] = param(prefix + "ffn/w1", D, F_d)
                layer["w3"] = param(prefix + "ffn/w3", D, F_d)
                layer["w2"] = param(prefix + "ffn/w2", F_d, D)
            self.layers.append(layer)
        self.final_norm = param("final_norm", D, gain=True)
        self.lm_head = None if cfg["tie_embeddings"] else param("lm_head", D, V)
        # Rotary table in double, as the CPU and CUDA backends compute it: [S, Dh/2].
        S, Dh = cfg["seq_len"], D // cfg["n_heads"]
        freqs = ROPE_THETA ** (-2.0 * torch.arange(Dh // 2, dtype=torch.float64) / Dh)
        angles = torch.arange(S, dtype=torch.float64)[:, None] * freqs[None, :]
        # [S, 1, Dh/2]: broadcasts over the heads of x [B, S, H, Dh/2]
        self.register_buffer("rope_cos", angles.cos().float().to(device)[:, None, :])
        self.register_buffer("rope_sin", angles.sin().float().to(device)[:, None, :])

    def load_checkpoint(self, path):
        import h5py
        with h5py.File(path, "r") as f:
            for name, p in self.paths.items():
                dataset = f["model/" + name]
                if tuple(dataset.shape) != tuple(p.shape):
                    raise ValueError(f"{path}: /model/{name} has shape {dataset.shape}, "
                                     f"the model {tuple(p.shape)}")
                with torch.no_grad():
                    p.copy_(torch.from_numpy(np.asarray(dataset[...], dtype=np.float32)))


class Step:
    """The forward and loss of one routing group, in the given precision and expert mode."""

    def __init__(self, model, dtype, experts):
        self.m, self.cfg, self.dtype, self.experts = model, model.cfg, dtype, experts
        self.autocast = dtype == torch.bfloat16

    def rmsnorm(self, x, gain):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS) * gain).to(self.dtype)

    def rotary(self, x):  # x: [B, S, H, Dh], rotate-half, in fp32
        half = x.shape[-1] // 2
        xf = x.float()
        lo, hi = xf[..., :half], xf[..., half:]
        cos, sin = self.m.rope_cos, self.m.rope_sin
        return torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], dim=-1).to(self.dtype)

    def attention(self, layer, h, B):
        S, H = self.cfg["seq_len"], self.cfg["n_heads"]
        D = h.shape[-1]
        q = (h @ layer["wq"]).view(B, S, H, D // H)
        k = (h @ layer["wk"]).view(B, S, H, D // H)
        v = (h @ layer["wv"]).view(B, S, H, D // H)
        q, k = self.rotary(q).transpose(1, 2), self.rotary(k).transpose(1, 2)
        v = v.to(self.dtype).transpose(1, 2)
        if hasattr(F, "scaled_dot_product_attention"):
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0 (CPU checks only)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)
            mask = torch.ones(S, S, dtype=torch.bool, device=h.device).triu(1)
            ctx = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return ctx.transpose(1, 2).reshape(B * S, D) @ layer["wo"]

    def experts_grouped(self, layer, x_perm, offs):
        dt = self.dtype
        h1 = torch._grouped_mm(x_perm, layer["w1"].to(dt), offs=offs)
        h3 = torch._grouped_mm(x_perm, layer["w3"].to(dt), offs=offs)
        return torch._grouped_mm(F.silu(h1) * h3, layer["w2"].to(dt), offs=offs)

    def experts_loop(self, layer, x_perm, counts):
        sizes = counts.to(torch.int64).tolist()  # one host synchronisation per layer, as ours
        outputs = []
        for e, x in enumerate(torch.split(x_perm, sizes)):
            outputs.append((F.silu(x @ layer["w1"][e]) * (x @ layer["w3"][e])) @ layer["w2"][e])
        return torch.cat(outputs).to(self.dtype)

    def moe(self, layer, u):  # u: [T, D]
        T = u.shape[0]
        E, K = self.cfg["num_experts"], self.cfg["top_k"]
        with torch.autocast(u.device.type, enabled=False):
            logits = u.float() @ layer["router"]
            probs = logits.softmax(-1)
            lse = torch.logsumexp(logits, -1)
            top_idx = logits.topk(K, dim=-1).indices  # [T, K], largest first
            gates = probs.gather(1, top_idx)
            if self.cfg["normalize_topk"]:
                gates = gates / gates.sum(-1, keepdim=True)
            flat = top_idx.reshape(-1)  # slot t*K+k -> expert
            counts = torch.zeros(E, device=u.device).index_add_(
                0, flat, torch.ones(T * K, device=u.device))
            aux = E * ((counts / (T * K)) * probs.mean(0)).sum()
            z = lse.pow(2).mean()
        # Slots grouped by expert, within an expert by slot (t*K+k), as router_plan orders them.
        order = torch.argsort(flat, stable=True)
        x_perm = u[order // K]
        if self.experts == "grouped":
            offs = torch.cumsum(counts, 0).to(torch.int32)
            y_perm = self.experts_grouped(layer, x_perm, offs)
        else:
            y_perm = self.experts_loop(layer, x_perm, counts)
        slot_row = torch.empty_like(order).scatter_(
            0, order, torch.arange(T * K, device=u.device))
        y_slots = y_perm[slot_row].view(T, K, -1)
        out = (y_slots.float() * gates.unsqueeze(-1)).sum(1).to(self.dtype)
        return out, aux, z, counts.detach()

    def dense(self, layer, u):
        return (F.silu(u @ layer["w1"]) * (u @ layer["w3"])) @ layer["w2"]

    def block(self, x, B, attn_norm, wq, wk, wv, wo, ffn_norm, router, w1, w3, w2):
        """One transformer block on x [T, D]; every weight is an argument, so that one compiled
        graph serves every layer (regional compilation). Returns x, aux, z, counts."""
        layer = dict(wq=wq, wk=wk, wv=wv, wo=wo, router=router, w1=w1, w3=w3, w2=w2)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            x = x + self.attention(layer, self.rmsnorm(x, attn_norm), B).to(self.dtype)
            u = self.rmsnorm(x, ffn_norm)
            if router is None:
                return x + self.dense(layer, u).to(self.dtype), None, None, None
            out, aux, z, counts = self.moe(layer, u)
            return x + out, aux, z, counts

    def head(self, x, final_norm, w, targets):
        """Mean cross-entropy of the logits x_final @ w (fp32 loss from bf16 logits)."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.rmsnorm(x, final_norm) @ w
        return F.cross_entropy(logits.float(), targets)

    def compile(self):
        self.block_fn = torch.compile(self.block)
        self.head_fn = torch.compile(self.head)
        return self

    block_fn = block
    head_fn = head

    def __call__(self, inputs, targets):
        """inputs, targets: int64 [B, S]. Returns loss, lm, mean aux, mean z, counts [MoE, E]."""
        B, S = inputs.shape
        x = F.embedding(inputs.reshape(-1), self.m.embedding).to(self.dtype)  # [T, D]
        aux_all, z_all, counts_all = [], [], []
        for layer in self.m.layers:
            x, aux, z, counts = self.block_fn(
                x, B, layer["attn_norm"], layer["wq"], layer["wk"], layer["wv"], layer["wo"],
                layer["ffn_norm"], layer.get("router"), layer["w1"], layer["w3"], layer["w2"])
            if aux is not None:
                aux_all.append(aux)
                z_all.append(z)
                counts_all.append(counts)
        w = self.m.embedding.t() if self.m.lm_head is None else self.m.lm_head
        lm = self.head_fn(x, self.m.final_norm, w, targets.reshape(-1))
        if aux_all:
            aux = torch.stack(aux_all).mean()
            z = torch.stack(z_all).mean()
            counts = torch.stack(counts_all)
        else:
            aux = z = torch.zeros((), device=inputs.device)
            counts = torch.zeros(0, 1, device=inputs.device)
        loss = lm + self.cfg["aux_loss_coef"] * aux + self.cfg["z_loss_coef"] * z
        return loss, lm.detach(), aux.detach(), z.detach(), counts


def make_optimizer(model, cfg, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    if device.type == "cuda":
        return torch.optim.AdamW(groups, fused=True, **kwargs), "fused"
    return torch.optim.AdamW(groups, **kwargs), "default"


def load_balance(counts):
    """Per layer: cv (population std / mean) and max / mean of the tokens per expert."""
    mean = counts.mean(-1, keepdims=True)
    cv = np.sqrt(((counts - mean) ** 2).mean(-1)) / mean[..., 0]
    return cv, counts.max(-1) / mean[..., 0]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(name, model, step_fn, cfg, batches, initial, device, warmup, timed, verbose):
    """Trains warmup + timed steps from the initial weights with a fresh optimizer; times the
    last `timed` steps. Nothing waits for the GPU inside the loop."""
    with torch.no_grad():
        for p, value in zip(model.parameters(), initial):
            p.copy_(value, non_blocking=True)
    optimizer, kind = make_optimizer(model, cfg, device)
    params = list(model.parameters())
    A = cfg["grad_accum_steps"]
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses, norms, parts, counts = [], [], [], []
    start = time.perf_counter()
    warmup_s = 0.0
    for step in range(warmup + timed):
        if step == warmup:
            sync(device)
            warmup_s = time.perf_counter() - start
            start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        inputs, targets = batches[step % len(batches)]
        loss_sum = 0.0
        step_counts = 0.0
        step_parts = []
        for micro in range(A):
            loss, lm, aux, z, c = step_fn(inputs[micro], targets[micro])
            (loss / A).backward()
            loss_sum = loss_sum + loss.detach() / A
            step_counts = step_counts + c
            step_parts.append(torch.stack([lm, aux, z]) / A)
        if cfg["grad_clip"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum)
        norms.append(norm.detach())
        parts.append(torch.stack(step_parts).sum(0))
        if step >= warmup:
            counts.append(step_counts)
    sync(device)
    seconds = time.perf_counter() - start
    losses = torch.stack(losses).float().cpu().numpy()
    norms = torch.stack(norms).float().cpu().numpy()
    first_parts = parts[0].float().cpu().numpy()
    tokens = timed * A * cfg["micro_batch_size"] * cfg["seq_len"]
    result = {
        "mode": name, "optimizer": kind, "torch": torch.__version__,
        "timed_steps": timed, "step_ms": 1e3 * seconds / timed,
        "tokens_per_s": tokens / seconds,
        "mfu": tokens / seconds * cfg["flops_per_token"] / PEAK_FLOPS,
        "warmup_s": warmup_s,
        "first_loss": float(losses[0]), "first_lm_loss": float(first_parts[0]),
        "first_aux_loss": float(first_parts[1]), "first_z_loss": float(first_parts[2]),
        "first_grad_norm": float(norms[0]), "last_loss": float(losses[-1]),
        "losses": [round(float(x), 6) for x in losses],
    }
    if device.type == "cuda":
        result["peak_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    if counts and counts[0].numel() > 0:
        per_step = torch.stack(counts).cpu().numpy()  # [timed, MoE layers, E]
        cv, max_mean = load_balance(per_step)
        result["load_cv"] = [round(float(x), 4) for x in cv.mean(0)]
        result["load_max_mean"] = [round(float(x), 4) for x in max_mean.mean(0)]
        result["load_cv_mean"] = float(cv.mean(0).mean())
        result["load_cv_max"] = float(cv.mean(0).max())
    if verbose:
        for step, (loss, norm) in enumerate(zip(losses, norms)):
            print(f"{name} step {step + 1} loss {loss:.6f} grad_norm {norm:.6f}", file=sys.stderr)
    del optimizer
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokens", help="TOKENS.bin of sy_bench_train --tokens (and TOKENS.bin.json)")
    parser.add_argument("--init", help="initial weights: sy_bench_train --save-init FILE.h5")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--experts", default="auto", choices=["auto", "grouped", "loop", "both"],
                        help="auto: grouped where torch._grouped_mm runs, else loop; both: time "
                             "both in eager (compiled uses grouped where it runs)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode (compiles)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp32"],
                        help="default: the config's run.precision")
    parser.add_argument("--json", help="append each mode's result line to this file")
    parser.add_argument("--verbose", action="store_true", help="every step's loss on stderr")
    args = parser.parse_args()

    with open(args.tokens + ".json") as f:
        cfg = json.load(f)
    unsupported = []
    if cfg["capacity_factor"] > 0:
        unsupported.append("moe.capacity_factor > 0")
    if cfg["router_score"] != "softmax":
        unsupported.append("moe.router_score sigmoid")
    if cfg["bias_update_rate"] > 0:
        unsupported.append("moe.bias_update_rate > 0")
    if cfg.get("shared_expert_hidden", 0) > 0:
        unsupported.append("moe.shared_expert_hidden > 0")
    if cfg["aux_loss_scope"] != "micro_batch":
        unsupported.append("moe.aux_loss_scope global")
    if cfg["optimizer"] != "adamw":
        unsupported.append("train.optimizer " + cfg["optimizer"])
    if unsupported:
        sys.exit("pytorch_model.py: not modelled: " + ", ".join(unsupported))

    device = torch.device(args.device)
    precision = args.dtype or ("bf16" if cfg["precision"] == "bf16" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # as ours (CUBLAS_DEFAULT_MATH)
        torch.backends.cudnn.allow_tf32 = False

    A, B, S = cfg["grad_accum_steps"], cfg["micro_batch_size"], cfg["seq_len"]
    raw = np.fromfile(args.tokens, dtype="<i4")
    if raw.size != cfg["steps"] * A * 2 * B * S:
        sys.exit(f"{args.tokens}: {raw.size} tokens, expected {cfg['steps']} steps x {A} x 2 x "
                 f"{B} x {S}")
    data = torch.from_numpy(raw.reshape(cfg["steps"], A, 2, B, S).astype(np.int64)).to(device)
    batches = [(data[s, :, 0], data[s, :, 1]) for s in range(cfg["steps"])]

    start = time.perf_counter()
    model = Model(cfg, device)
    if args.init:
        model.load_checkpoint(args.init)
    initial = [p.detach().to("cpu", copy=True) for p in model.parameters()]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"pytorch {torch.__version__} on {device} ({gpu}), "
          f"{cfg['name']}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{'weights from ' + args.init if args.init else 'own random weights'}, "
          f"set-up {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    has_moe = cfg["num_experts"] > 0 and any(cfg["moe_layers"])
    grouped_ok = has_moe and grouped_mm_works(device)
    if args.experts == "grouped" and not grouped_ok:
        sys.exit("pytorch_model.py: --experts grouped, but torch._grouped_mm does not run here")
    if not has_moe:
        eager_variants = ["dense"]
    elif args.experts == "both":
        eager_variants = (["grouped"] if grouped_ok else []) + ["loop"]
    elif args.experts == "auto":
        eager_variants = ["grouped" if grouped_ok else "loop"]
    else:
        eager_variants = [args.experts]
    compiled_variant = "dense" if not has_moe else (
        "loop" if args.experts == "loop" or not grouped_ok else "grouped")

    results, failures = [], 0
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        variants = eager_variants if mode == "eager" else [compiled_variant]
        for variant in variants:
            step_fn = Step(model, dtype, variant)
            if mode == "compiled":
                step_fn.compile()
            elif mode != "eager":
                sys.exit(f"unknown mode {mode}")
            name = f"{mode}-{variant}"
            try:
                result = run_mode(name, model, step_fn, cfg, batches, initial, device,
                                  args.warmup, args.steps, args.verbose)
            except Exception as error:  # one mode failing (a compiler error, say) spares the rest
                traceback.print_exc()
                print(f"{name} failed: {type(error).__name__}: {error}", file=sys.stderr,
                      flush=True)
                failures += 1
                for p in model.parameters():
                    p.grad = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            result.update(config=cfg["name"], experts=variant, dtype=precision,
                          weights="init" if args.init else "own")
            line = json.dumps(result)
            print(line, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(line + "\n")
            results.append(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
