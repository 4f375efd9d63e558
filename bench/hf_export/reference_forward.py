#!/usr/bin/env python3
"""transformers' Llama / Mixtral / OLMoE / Qwen3 / Qwen3-MoE forward written out in plain Python (no
numpy, no torch) over an exported folder: a check of the export's mapping that runs where
transformers cannot (the development machine). It follows their modeling files step by step: RMSNorm
x * rsqrt(mean(x^2) + rms_norm_eps) * w; q/k/v/o as torch.nn.Linear (y = W x, W [out, in]);
rotary with cos/sin of cat(freqs, freqs) and rotate_half; causal softmax(q k^T / sqrt(head_dim));
the Mixtral block: softmax over the gate's logits, top-k, renormalised, sum of
w2(silu(w1 x) * w3 x); the dense MLP down(silu(gate x) * up x); logits = norm(x) @ lm_head^T
(embed_tokens when tied). OLMoE: q_norm, k_norm over the whole projections, norm_topk_prob.
Qwen3: q_norm, k_norm over each head (head_dim wide, heads of any width); Qwen3-MoE: MoE in the
layers that mlp_only_layers and decoder_sparse_step leave sparse. Slow: one short sequence is what
it is for.

    python3 bench/hf_export/reference_forward.py EXPORT_DIR --text FILE --start B --seq-len S [--sequences N]
Prints the mean over sequences i < N (tokens [i*S, (i+1)*S] after --start) of the mean
cross-entropy of their S positions, as `switchyard eval --tokens N*S` computes it over /val.
"""
import argparse
import json
import math
import os
import struct
import sys


def read_safetensors(path):
    data = open(path, "rb").read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = body[begin:end]
        if entry["dtype"] == "F32":
            values = list(struct.unpack("<%df" % (len(raw) // 4), raw))
        elif entry["dtype"] == "BF16":
            halves = struct.unpack("<%dH" % (len(raw) // 2), raw)
            values = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
        else:
            sys.exit("unsupported dtype " + entry["dtype"])
        shape = entry["shape"]
        if len(shape) == 2:
            cols = shape[1]
            values = [values[r * cols:(r + 1) * cols] for r in range(shape[0])]
        tensors[name] = values
    return tensors


def linear(weight, x):  # torch.nn.Linear without bias: y = W x, W [out, in]
    return [sum(w * v for w, v in zip(row, x)) for row in weight]


def rmsnorm(x, weight, eps):
    r = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v * r * w for v, w in zip(x, weight)]


def silu(a):
    return a / (1.0 + math.exp(-a))


def softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    s = sum(e)
    return [v / s for v in e]


def inverse_frequencies(config, head_dim, theta):
    """modeling_rope_utils: the default rope's inv_freq, and the linear and llama3 rope types."""
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") == "default":
        rope = config.get("rope_scaling") or rope
    kind = rope.get("rope_type", rope.get("type", "default"))
    inv_freq = [1.0 / theta ** (2.0 * i / head_dim) for i in range(head_dim // 2)]
    if kind == "linear":
        return [f / rope["factor"] for f in inv_freq]
    if kind == "llama3":  # _compute_llama3_parameters
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        out = []
        for f in inv_freq:
            wavelen = 2 * math.pi / f
            scaled = f / factor if wavelen > old / low else f
            if not (wavelen < old / high) and not (wavelen > old / low):
                smooth = (old / wavelen - low) / (high - low)
                scaled = (1 - smooth) * scaled / factor + smooth * scaled
            out.append(scaled)
        return out
    if kind != "default":
        sys.exit("unsupported rope type " + kind)
    return inv_freq


def rotary(vec, position, heads, head_dim, inv_freq):
    half = head_dim // 2
    out = list(vec)
    for h in range(heads):
        base = h * head_dim
        for j in range(head_dim):
            i = j % half  # emb = cat(freqs, freqs)
            angle = position * inv_freq[i]
            rotated = -vec[base + j + half] if j < half else vec[base + j - half]
            out[base + j] = vec[base + j] * math.cos(angle) + rotated * math.sin(angle)
    return out


def forward_loss(export_dir, tokens):
    config = json.load(open(os.path.join(export_dir, "config.json")))
    t = read_safetensors(os.path.join(export_dir, "model.safetensors"))
    D, H = config["hidden_size"], config["num_attention_heads"]
    Hkv = config.get("num_key_value_heads") or H  # query head h reads kv head h // (H // Hkv)
    Dh = config.get("head_dim") or D // H
    eps = config["rms_norm_eps"]
    theta = config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta", 10000.0))
    inv_freq = inverse_frequencies(config, Dh, theta)
    model_type = config["model_type"]
    olmoe = model_type == "olmoe"
    per_head_norm = model_type in ("qwen3", "qwen3_moe")
    mixtral = model_type == "mixtral"

    def sparse(layer):  # modeling_qwen3_moe's rule; Mixtral and OLMoE: every layer
        if model_type == "qwen3_moe":
            return (layer not in (config.get("mlp_only_layers") or []) and
                    (layer + 1) % config.get("decoder_sparse_step", 1) == 0)
        return model_type in ("mixtral", "olmoe")

    def head_norm(vec, heads, weight):  # Qwen3: rmsnorm over each head's head_dim values
        return [v for h in range(heads) for v in rmsnorm(vec[h * Dh:(h + 1) * Dh], weight, eps)]

    inputs, targets = tokens[:-1], tokens[1:]
    S = len(inputs)
    x = [list(t["model.embed_tokens.weight"][tok]) for tok in inputs]
    for l in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % l
        u = [rmsnorm(row, t[p + "input_layernorm.weight"], eps) for row in x]
        q = [linear(t[p + "self_attn.q_proj.weight"], row) for row in u]
        k = [linear(t[p + "self_attn.k_proj.weight"], row) for row in u]
        if olmoe:  # modeling_olmoe: q_norm(q_proj(x)), k_norm(k_proj(x)) before the reshape
            q = [rmsnorm(row, t[p + "self_attn.q_norm.weight"], eps) for row in q]
            k = [rmsnorm(row, t[p + "self_attn.k_norm.weight"], eps) for row in k]
        if per_head_norm:  # modeling_qwen3: q_norm(q_proj(x).view(..., head_dim)) per head
            q = [head_norm(row, H, t[p + "self_attn.q_norm.weight"]) for row in q]
            k = [head_norm(row, Hkv, t[p + "self_attn.k_norm.weight"]) for row in k]
        q = [rotary(row, s, H, Dh, inv_freq) for s, row in enumerate(q)]
        k = [rotary(row, s, Hkv, Dh, inv_freq) for s, row in enumerate(k)]
        v = [linear(t[p + "self_attn.v_proj.weight"], row) for row in u]
        context = [[0.0] * (H * Dh) for _ in range(S)]
        for h in range(H):
            lo, hi = h * Dh, (h + 1) * Dh
            kv = h // (H // Hkv) * Dh
            for s in range(S):
                scores = [sum(a * b for a, b in zip(q[s][lo:hi], k[j][kv:kv + Dh])) / math.sqrt(Dh)
                          for j in range(s + 1)]
                probs = softmax(scores)
                for d in range(Dh):
                    context[s][lo + d] = sum(probs[j] * v[j][kv + d] for j in range(s + 1))
        attn = [linear(t[p + "self_attn.o_proj.weight"], row) for row in context]
        x = [[a + b for a, b in zip(r, o)] for r, o in zip(x, attn)]
        u = [rmsnorm(row, t[p + "post_attention_layernorm.weight"], eps) for row in x]
        ffn = []
        for row in u:
            if sparse(l):
                block = p + ("block_sparse_moe." if mixtral else "mlp.")
                w1, w3, w2 = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
                probs = softmax(linear(t[block + "gate.weight"], row))
                top = sorted(range(len(probs)), key=lambda e: -probs[e])[:config["num_experts_per_tok"]]
                renormalise = True if mixtral else config.get("norm_topk_prob", False)
                total = sum(probs[e] for e in top) if renormalise else 1.0
                y = [0.0] * D
                for e in top:
                    ep = block + "experts.%d." % e
                    hidden = [silu(a) * b for a, b in zip(linear(t[ep + w1 + ".weight"], row),
                                                          linear(t[ep + w3 + ".weight"], row))]
                    y = [acc + probs[e] / total * o for acc, o in zip(y, linear(t[ep + w2 + ".weight"], hidden))]
            else:
                hidden = [silu(a) * b for a, b in zip(linear(t[p + "mlp.gate_proj.weight"], row),
                                                      linear(t[p + "mlp.up_proj.weight"], row))]
                y = linear(t[p + "mlp.down_proj.weight"], hidden)
            ffn.append(y)
        x = [[a + b for a, b in zip(r, o)] for r, o in zip(x, ffn)]
    head = t["model.embed_tokens.weight"] if config["tie_word_embeddings"] else t["lm_head.weight"]
    total = 0.0
    for s, row in enumerate(x):
        h = rmsnorm(row, t["model.norm.weight"], eps)
        logits = linear(head, h)
        m = max(logits)
        lse = m + math.log(sum(math.exp(z - m) for z in logits))
        total += lse - logits[targets[s]]
    return total / S


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("--text", required=True, help="the corpus text (byte tokens)")
    parser.add_argument("--start", type=int, required=True, help="byte offset of /val in it")
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--sequences", type=int, default=1)
    args = parser.parse_args()
    data = open(args.text, "rb").read()
    S = args.seq_len
    losses = [forward_loss(args.export, list(data[args.start + i * S:args.start + (i + 1) * S + 1]))
              for i in range(args.sequences)]
    print(repr(sum(losses) / len(losses)))


if __name__ == "__main__":
    main()
