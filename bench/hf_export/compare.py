#!/usr/bin/env python3
"""Loads a `switchyard export --format hf` folder with Hugging Face transformers and checks it
against our own numbers (bench/hf_export/check.sh runs it; docs/export.md):

  1. every tensor of model.safetensors reached the model (no missing or unexpected keys; the
     values in the model equal the file's, through transformers 5's fused expert tensors);
  2. the validation loss on the same sequences as `switchyard eval` (sequence i is tokens
     [i*S, (i+1)*S) of the token file's /val, targets shifted by one; the mean of the
     per-sequence mean cross-entropies) matches our val_loss within --tolerance (relative);
  3. greedy decoding (`generate(do_sample=False)`) of the prompt gives the continuation that
     `switchyard generate --temperature 0` printed (byte tokenizer: token ids are the bytes).

Prints one table row and appends it as JSON to --json; exit status 1 on a mismatch.
    python3 bench/hf_export/compare.py --export DIR --tokens TOKENS.h5 --val-loss X
        --sequences N --prompt TEXT --generated OURS.txt --new-tokens K [--label moe]
    python3 bench/hf_export/compare.py --table RESULTS.jsonl     # the summary table
"""
import argparse
import json
import re
import math
import os
import sys


def fail(message):
    print("compare.py: error: " + message, file=sys.stderr)
    sys.exit(1)


def print_table(path):
    rows = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    header = ["case", "arch", "weights", "ours val_loss", "transformers val_loss", "rel diff",
              "tol", "greedy", "result"]
    table = [header]
    for r in rows:
        table.append([
            r["label"], r.get("architecture", "?"), r.get("dtype", "?"),
            "%.10f" % r["ours_val_loss"] if r.get("ours_val_loss") is not None else "-",
            "%.10f" % r["hf_val_loss"] if r.get("hf_val_loss") is not None else "-",
            "%.2e" % r["relative_difference"] if r.get("relative_difference") is not None else "-",
            "%.0e" % r["tolerance"], r.get("greedy", "-"), "ok" if r["ok"] else "FAIL"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    return all(r["ok"] for r in rows) and len(rows) > 0


def validation_tokens(args, count):
    """The first `count` tokens of /val: from the token file with h5py; without h5py, from the
    text file it was prepared from (bytes tokenizer, one file: /val is the bytes after
    floor((1 - val_fraction) * size), docs/data.md)."""
    import numpy as np
    try:
        import h5py
    except ImportError:
        h5py = None
    if h5py is not None:
        with h5py.File(args.tokens, "r") as f:
            if "val" not in f:
                fail("%s has no /val dataset" % args.tokens)
            val = f["val"]
            if val.shape[0] < count:
                fail("%s: /val has %d tokens, %d needed" % (args.tokens, val.shape[0], count))
            return np.asarray(val[:count], dtype=np.int64), "h5py " + args.tokens
    if not args.text:
        fail("h5py is not installed and no --text was given to read the validation split from")
    data = open(args.text, "rb").read()
    start = int(math.floor((1.0 - args.val_fraction) * len(data)))
    val = np.frombuffer(data[start:], dtype=np.uint8).astype(np.int64)
    if val.shape[0] < count:
        fail("%s: the validation bytes are %d, %d needed" % (args.text, val.shape[0], count))
    return val[:count], "bytes of %s after %d (h5py not installed)" % (args.text, start)


def load_model(export_dir):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    major = int(transformers.__version__.split(".")[0])
    kwargs = {"attn_implementation": "eager", "output_loading_info": True}
    kwargs["dtype" if major >= 5 else "torch_dtype"] = torch.float32
    try:
        model, info = AutoModelForCausalLM.from_pretrained(export_dir, **kwargs)
    except Exception as error:  # say which folder and which transformers
        fail("transformers %s could not load %s: %s: %s"
             % (transformers.__version__, export_dir, type(error).__name__, error))
    model.eval()
    return model, info, transformers.__version__


def per_expert(name):
    """(layer prefix, expert, w1|w3|w2) of one expert's tensor name, else None."""
    match = re.match(r"(.*)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight$", name)
    if not match:
        return None
    which = {"w1": "w1", "w3": "w3", "w2": "w2", "gate_proj": "w1", "up_proj": "w3",
             "down_proj": "w2"}.get(match.group(3))
    return (match.group(1), int(match.group(2)), which) if which else None


def check_weights(model, export_dir, config):
    """Every tensor of the file equals the model's copy of it: by name where transformers keeps
    the name, through the fused expert tensors (gate_up_proj = [w1; w3] per expert, down_proj =
    w2) where transformers 5 merges them. Returns (compared, problems)."""
    import torch
    from safetensors import safe_open
    state = model.state_dict()
    compared, problems = 0, []
    index = os.path.join(export_dir, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])  # a sharded folder (make_hf_model.py writes one)
    for file_name in files:
        with safe_open(os.path.join(export_dir, file_name), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name).to(torch.float32)
                target = None
                if name in state:
                    target = state[name]
                elif per_expert(name):
                    # Mixtral's block_sparse_moe.experts.E.w1/w3/w2, OLMoE's and Qwen3-MoE's
                    # mlp.experts.E.gate_proj/up_proj/down_proj.
                    prefix, expert, which = per_expert(name)
                    ffn = tensor.shape[0] if which in ("w1", "w3") else tensor.shape[1]
                    for module in (".mlp.experts.", ".block_sparse_moe.experts."):
                        fused = state.get(prefix + module + ("down_proj" if which == "w2" else "gate_up_proj"))
                        if fused is None:
                            continue
                        if which == "w2" and tuple(fused.shape[1:]) == tuple(tensor.shape):
                            target = fused[expert]
                        elif which != "w2" and fused.shape[1] == 2 * ffn:
                            rows = slice(0, ffn) if which == "w1" else slice(ffn, 2 * ffn)
                            target = fused[expert][rows]
                        elif which == "w2" and tuple(fused.shape[1:]) == tuple(tensor.shape[::-1]):
                            target = fused[expert].t()  # stored [in, out]
                        elif which != "w2" and fused.shape[2] == 2 * ffn:
                            cols = slice(0, ffn) if which == "w1" else slice(ffn, 2 * ffn)
                            target = fused[expert][:, cols].t()
                        break
                elif name == "lm_head.weight" or name.endswith(".gate.weight"):
                    alias = name.replace(".block_sparse_moe.gate.", ".mlp.gate.")
                    target = state.get(alias)
                if target is None:
                    problems.append("%s: no tensor of the model corresponds (state_dict keys: %s ...)"
                                    % (name, ", ".join(list(state)[:6])))
                    continue
                compared += 1
                if tuple(target.shape) != tuple(tensor.shape):
                    problems.append("%s: shape %s in the file, %s in the model"
                                    % (name, tuple(tensor.shape), tuple(target.shape)))
                elif not torch.equal(target.to(torch.float32), tensor):
                    diff = (target.to(torch.float32) - tensor).abs().max().item()
                    problems.append("%s: the model's values differ from the file's (max |diff| %g)" % (name, diff))
    if config.get("tie_word_embeddings"):
        head, table = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        if not torch.equal(head, table):
            problems.append("tie_word_embeddings is true but lm_head.weight is not embed_tokens.weight")
    return compared, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", help="print the summary table of this results.jsonl and exit")
    parser.add_argument("--export", help="the folder switchyard export wrote")
    parser.add_argument("--tokens", help="the token file (HDF5, /val)")
    parser.add_argument("--text", help="without h5py: the text file the token file was prepared from")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--val-loss", type=float, help="our val_loss (switchyard eval)")
    parser.add_argument("--sequences", type=int, help="our eval's sequences")
    parser.add_argument("--prompt", help="the prompt given to switchyard generate")
    parser.add_argument("--generated", help="a file with switchyard generate's stdout")
    parser.add_argument("--new-tokens", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative, on val_loss")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--label", default="export")
    parser.add_argument("--json", help="append the result row here")
    args = parser.parse_args()
    if args.table:
        sys.exit(0 if print_table(args.table) else 1)
    for name in ("export", "tokens", "val_loss", "sequences"):
        if getattr(args, name) is None:
            fail("--%s is required" % name.replace("_", "-"))

    import numpy as np
    import torch
    torch.manual_seed(0)
    config = json.load(open(os.path.join(args.export, "config.json")))
    S = int(config["max_position_embeddings"])  # the export writes model.seq_len there
    model, info, version = load_model(args.export)
    row = {"label": args.label, "architecture": type(model).__name__, "transformers": version,
           "dtype": config.get("dtype", "?"), "tolerance": args.tolerance, "ok": False,
           "ours_val_loss": args.val_loss, "hf_val_loss": None, "relative_difference": None}
    problems = []
    expected_class = config["architectures"][0]
    if type(model).__name__ != expected_class:
        problems.append("transformers built %s, config.json names %s" % (type(model).__name__, expected_class))
    tied_head = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
    missing = sorted(set(info.get("missing_keys", [])) - tied_head)
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing:
        problems.append("missing in the file (initialised at random): %s" % ", ".join(missing[:8]))
    if unexpected:
        problems.append("in the file but unused by the model: %s" % ", ".join(unexpected[:8]))
    if mismatched:
        problems.append("shape mismatches: %s" % mismatched[:4])
    compared, weight_problems = check_weights(model, args.export, config)
    problems += weight_problems
    row["weights_compared"] = compared

    # The validation loss, as trainer/evaluate.cpp forms it.
    n = args.sequences
    tokens, source = validation_tokens(args, n * S + 1)
    inputs = np.stack([tokens[i * S:(i + 1) * S] for i in range(n)])
    targets = np.stack([tokens[i * S + 1:(i + 1) * S + 1] for i in range(n)])
    losses = []
    with torch.no_grad():
        for start in range(0, n, args.batch):
            ids = torch.from_numpy(inputs[start:start + args.batch])
            tgt = torch.from_numpy(targets[start:start + args.batch])
            logits = model(input_ids=ids, use_cache=False).logits
            logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
            nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            losses += nll.mean(dim=1).tolist()
    hf_loss = sum(losses) / len(losses)
    relative = abs(hf_loss - args.val_loss) / abs(args.val_loss)
    row.update(hf_val_loss=hf_loss, relative_difference=relative, val_source=source)
    if not relative <= args.tolerance:
        problems.append("val_loss: transformers %.10f, ours %.10f, relative difference %.3e > %.0e"
                        % (hf_loss, args.val_loss, relative, args.tolerance))

    # Greedy continuation against switchyard generate --temperature 0 (byte tokens).
    if args.prompt is not None and args.generated:
        prompt = list(args.prompt.encode("utf-8"))
        ours_text = open(args.generated, "rb").read()
        if ours_text.endswith(b"\n"):
            ours_text = ours_text[:-1]  # generate prints the text and a newline
        ours = list(ours_text)
        if len(prompt) + args.new_tokens > S:
            problems.append("prompt %d + %d new tokens exceed seq_len %d: our generate would "
                            "slide its window" % (len(prompt), args.new_tokens, S))
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 num_beams=1, max_new_tokens=args.new_tokens, eos_token_id=None,
                                 pad_token_id=0)
            theirs = out[0].tolist()
            # Margins of the top two logits at each generated position (full forward, no cache).
            logits = model(input_ids=torch.tensor([theirs[:-1]]), use_cache=False).logits[0]
        top2 = torch.topk(logits.to(torch.float64), 2, dim=-1).values
        margins = (top2[:, 0] - top2[:, 1]).tolist()
        new_ours, new_theirs = ours[len(prompt):], theirs[len(prompt):]
        row["greedy_ours"] = bytes(new_ours).decode("utf-8", "replace")
        row["greedy_transformers"] = bytes(new_theirs).decode("utf-8", "replace")
        if ours[:len(prompt)] != prompt:
            problems.append("our generate's output does not start with the prompt")
        if new_ours == new_theirs:
            row["greedy"] = "%d/%d same" % (len(new_ours), args.new_tokens)
        else:
            k = next((i for i in range(min(len(new_ours), len(new_theirs)))
                      if new_ours[i] != new_theirs[i]), min(len(new_ours), len(new_theirs)))
            margin = margins[len(prompt) - 1 + k] if len(prompt) - 1 + k < len(margins) else float("nan")
            row["greedy"] = "differs at %d/%d" % (k, args.new_tokens)
            problems.append(
                "greedy: first difference at new token %d: ours %r, transformers %r (transformers' "
                "top-2 logit margin there %.3g%s)" % (k, bytes(new_ours), bytes(new_theirs), margin,
                                                       ", a near tie" if margin < 1e-4 else ""))
    row["problems"] = problems
    row["ok"] = not problems
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print("%s: %s via transformers %s; %d tensors compared; val from %s; val_loss ours %.10f, "
          "transformers %.10f, relative %.2e; greedy %s"
          % (args.label, row["architecture"], version, compared, source, args.val_loss, hf_loss,
             relative, row.get("greedy", "not run")))
    if "greedy_ours" in row:
        print("  ours:         %r\n  transformers: %r" % (row["greedy_ours"], row["greedy_transformers"]))
    for problem in problems:
        print("  MISMATCH: " + problem)
    sys.exit(0 if row["ok"] else 1)


if __name__ == "__main__":
    main()
