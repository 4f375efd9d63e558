#!/usr/bin/env python3
"""Writes a transformers model folder that transformers itself made, for `switchyard import` to
read (bench/hf_export/check.sh, docs/export.md "Import"): a LlamaForCausalLM, MixtralForCausalLM,
OlmoeForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM or MistralForCausalLM (llama31: a Llama
with Llama 3.1's rotary scaling) of random weights, saved with
save_pretrained as safetensors in several shards (model.safetensors.index.json), in float32 or
bfloat16; --fused saves transformers 5's runtime layout (save_original_format=False: each MoE
layer's experts as mlp.experts.gate_up_proj and mlp.experts.down_proj).

    python3 bench/hf_export/make_hf_model.py --arch llama --out DIR [--dtype float32] [--fused]

The weights are drawn wider than transformers' initialisation (std 0.02 gives logits near zero,
a loss near ln(vocab) whatever the mapping), so that a tensor read into the wrong place moves
the loss well past the comparison's tolerance. The configs use what import maps rather than our
defaults: grouped-query attention, Llama 3's rotary theta, a norm epsilon of 1e-6, an untied head;
the Qwen3 models have heads twice hidden_size / num_attention_heads wide (head_dim 32), and the
Qwen3-MoE a dense layer 0 (mlp_only_layers).
"""
import argparse

import torch
import transformers


def make_config(arch):
    common = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    scaling = None
    if arch in ("llama", "llama31"):
        config, theta = transformers.LlamaConfig(intermediate_size=160, **common), 500000.0
        if arch == "llama31":  # Llama 3.1's rotary scaling, its context cut to 64 positions
            scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    elif arch == "olmoe":  # QK-norm, 8 experts of 32, top-3, gates not renormalised
        config = transformers.OlmoeConfig(intermediate_size=32, num_experts=8,
                                          num_experts_per_tok=3, norm_topk_prob=False, **common)
        theta = 10000.0
    elif arch == "mistral":  # Mistral 7B v0.3's form: no sliding window
        config = transformers.MistralConfig(intermediate_size=160, sliding_window=None, **common)
        theta = 1e6
    elif arch == "qwen3":
        config, theta = transformers.Qwen3Config(intermediate_size=160, head_dim=32, **common), 1e6
    elif arch == "qwen3_moe":  # 8 experts of 32, top-3, not renormalised; layer 0 dense
        # head_dim is not a declared field of Qwen3MoeConfig (the modeling code reads it with
        # getattr): passed as an extra keyword, which the config keeps and saves.
        config = transformers.Qwen3MoeConfig(intermediate_size=160, moe_intermediate_size=32,
                                             num_experts=8, num_experts_per_tok=3,
                                             norm_topk_prob=False, mlp_only_layers=[0],
                                             head_dim=32, **common)
        theta = 1e6
    else:
        config = transformers.MixtralConfig(intermediate_size=96, num_local_experts=4,
                                            num_experts_per_tok=2, sliding_window=None, **common)
        theta = 1e6
    # transformers 5 keeps the theta in rope_parameters, 4 in rope_theta: set whichever exists.
    if isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_parameters["rope_theta"] = theta
        if scaling:
            config.rope_parameters.update(scaling)
    else:
        config.rope_theta = theta
        if scaling:
            config.rope_scaling = scaling
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["llama", "llama31", "mistral", "mixtral", "olmoe",
                                           "qwen3", "qwen3_moe"],
                        required=True)
    parser.add_argument("--fused", action="store_true",
                        help="save_original_format=False (transformers 5's fused experts)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = make_config(args.arch)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.15 * torch.randn_like(parameter))
    model = model.to(getattr(torch, args.dtype))
    # Small shards: the import reads the index and several files.
    options = dict(safe_serialization=True, max_shard_size="100KB")
    if args.fused:
        options["save_original_format"] = False  # transformers 5 only: fails loudly before it
    model.save_pretrained(args.out, **options)
    print("wrote %s: %s, %d parameters, %s, transformers %s" % (
        args.out, type(model).__name__, sum(p.numel() for p in model.parameters()), args.dtype,
        transformers.__version__))


if __name__ == "__main__":
    main()
