"""Reference fixtures for the C++ reader of Hugging Face byte-level BPE `tokenizer.json` files.

Trains small byte-level BPE tokenizers with the Hugging Face `tokenizers` library in the
configurations real checkpoints ship (GPT-2, Llama 3, Qwen2/3, DeepSeek-V3) plus a few that
exercise every `Split` behaviour, normalizers and added-token options, and records what the
library itself makes of many awkward texts. The C++ side (data/hf_tokenizer.*) loads the same
files and must give the same ids and decoded strings: the library, not our reading of its
source, is the reference.

Output, in OUTDIR:
  NAME.json      one tokenizer.json per tokenizer (as the library saves it; the one exception,
                 gpt2_legacy_merges.json, is written here because it holds the old merges form)
  expected.json  {"tokenizers_version", "corpus_sha256", "vocab_sizes": {NAME: n},
                  "cases": {NAME: [{"text", "ids", "decoded"}, ...]}}
                 ids from tok.encode(text, add_special_tokens=False), decoded from
                 tok.decode(ids, skip_special_tokens=False), both on the file as reloaded.

The training corpus is README.md and docs/*.md of this repository plus TEXTS, so the output
is a function of the repository and the library version (recorded in expected.json).

Run (needs Python 3 with `tokenizers` 0.21 or later; nothing is downloaded):
  python3 tests/data/hf_tokenizers/make_fixtures.py OUTDIR
"""
import hashlib
import json
import sys
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parents[3]

# Small enough that every file stays well under 60 KB, large enough for multi-level merges.
VOCAB_SIZE = 700
MIN_FREQUENCY = 2
# Corpus lines sampled as extra texts: lines the merges were trained on, so long merge chains.
SAMPLE_LINES = 12
LONG_SAMPLE_CHARS = 1000

# Llama 3's split pattern, as in Meta-Llama-3's tokenizer.json (escapes, not raw CR/LF).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2/Qwen3: Llama 3's pattern with one digit per pre-token.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek-V3's three Splits, verbatim. Its main pattern holds literal CR and LF characters
# rather than \r \n escapes, so this is deliberately not a raw string: the C++ regex reader
# has to take both spellings.
DEEPSEEK_NUMBERS = r"\p{N}{1,3}"
DEEPSEEK_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DEEPSEEK_MAIN = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
    "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*"
    "|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)

ENDOFTEXT = "<|endoftext|>"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
QWEN2_SPECIALS = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"]
# DeepSeek's own: fullwidth bars and U+2581, so special-token matching is not ASCII-only.
DEEPSEEK_SPECIALS = [
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
]

# A word put into the vocabulary of gpt2 and llama3 with no merges that build it: under
# Llama 3's ignore_merges a pre-token found whole in the vocabulary is one token, under GPT-2
# it must still be built from merges (so it never appears).
UNREACHABLE_WORD = " Zzyzx"

TEXTS = [
    # Plain prose.
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Switchyard trains mixture-of-experts models, one expert shard per rank.",
    "Each token is routed to its top-2 experts; the router's loss keeps the load even.",
    # Contractions: the patterns match them case-insensitively, GPT-2's does not.
    "I'LL", "don't", "We'Re", "it's", "I'm here, you'VE been, they'd go, she'S", "rock 'n' roll",
    "it\u2019s a curly apostrophe",
    # Numbers: {1,3} digit groups, other digit scripts, letter-numbers.
    "1234567", "3.14159", "x=12345678901 y=-42", "\u0661\u0662\u0663", "\u216b",
    "\u2460\u2461\u2462", "v1.2.3-rc4",
    # Whitespace in every arrangement the patterns treat differently.
    "a  b   c", "tab\there\t\tand", "trailing  ", " leading", "   ", "\n\n\n", "line1\r\nline2\r\n",
    "a \n b", "\t\n \t", "end\n", "  two\n\n  paragraphs  \n",
    # Unicode whitespace and format characters (\s and \p{Z} disagree on some).
    "\u000b", "x\u000by", "\u0085", "a\u0085b", "\u00a0", "a\u00a0b", "\u2028", "a\u2028b",
    "\u3000", "\u5168\u89d2\u3000\u30b9\u30da\u30fc\u30b9", "\u200bzero width", "\ufeffBOM",
    # Scripts: CJK (DeepSeek's own split), kana, Hangul, RTL, combining marks.
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059",
    "\u4e2d\u6587\u6587\u672c\uff0c\u6807\u70b9\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "A\u0301\u0302\u0303 stacked marks",
    # Emoji: skin tone modifier and ZWJ sequences are several code points each.
    "\U0001f44d\U0001f3fd family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f680\U0001f680\U0001f680",
    # Normalization: decomposed vs composed, fullwidth, ligatures, compatibility forms.
    "cafe\u0301", "caf\u00e9", "\uff23af\u00e9", "\ufb01nance \ufb02ow", "nai\u0308ve na\u00efve",
    "\u212b \u00c5", "x\u00b2 \u2026",
    # Special and added tokens inline, at the edges, back to back and almost.
    "<|im_start|>user\nHi there<|im_end|>\n", ENDOFTEXT, "x<|endoftext|>y",
    "<|endoftext|><|endoftext|>", "<|endoftext", "  <mask>  and <sep>   after", "<mask><sep>",
    "say hello world now", "sayhello worldnow", "hello world", "Hello World",
    "<|eot_id|>", "<|begin_of_text|>Hi<|eot_id|>",
    DEEPSEEK_SPECIALS[0] + "Hi" + DEEPSEEK_SPECIALS[1],
    # Degenerate and adversarial.
    "", "qxjzvkwpbfgh", "a" * 64, "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "Zzyzx", UNREACHABLE_WORD + " Road",
    "!!!???...---", "".join(map(chr, range(32, 127))), "#include <stdio.h>",
    "def f(x):\n    return x ** 2\n", "https://example.com/a?b=c&d=e#f",
    "src/data/hf_tokenizer.cpp:42",
    "CamelCaseIdentifier snake_case_name ALLCAPS", "\"double\" 'single' `back`",
]


def read_corpus(root):
    """README.md and docs/*.md in a fixed order: the training input, and so the merges, only
    change when these files do."""
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [path.read_text(encoding="utf-8") for path in paths]


def corpus_samples(documents):
    """Evenly spaced non-blank corpus lines and a long opening passage: text the merges were
    learnt from, so long merge chains and many rank ties get checked."""
    lines = [line for document in documents for line in document.splitlines() if line.strip()]
    step = max(1, len(lines) // SAMPLE_LINES)
    return lines[::step][:SAMPLE_LINES] + [documents[0][:LONG_SAMPLE_CHARS]]


def byte_level(split_first=()):
    """Splits (if any) then ByteLevel without its own regex, as Llama 3, Qwen2 and DeepSeek
    ship it."""
    last = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*split_first, last])


def split(pattern, behavior, invert=False):
    return pre_tokenizers.Split(pattern, behavior, invert=invert)


def qwen2_added_tokens():
    """One token per AddedToken option the C++ matcher has to honour."""
    return [
        AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False),
        AddedToken("<sep>", rstrip=True, special=True, normalized=False),
        AddedToken("hello world", single_word=True, normalized=True, special=False),
        AddedToken("\uff23af\u00e9", normalized=True, special=False),
        # Stored decomposed: the library matches its NFC form, so composed and decomposed
        # texts both hit it, while decoding gives back the stored (decomposed) content.
        AddedToken("nai\u0308ve", normalized=True, special=False),
    ]


def specs():
    """name -> how to build it. Factories rather than objects: a pre-tokenizer or normalizer
    object is shared by reference, so each tokenizer gets fresh ones."""
    return {
        "gpt2": dict(
            pre_tokenizer=lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            specials=[ENDOFTEXT], unreachable=[UNREACHABLE_WORD]),
        "gpt2_prefix": dict(
            pre_tokenizer=lambda: pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
            specials=[ENDOFTEXT]),
        "llama3": dict(
            pre_tokenizer=lambda: byte_level([split(Regex(LLAMA3_PATTERN), "isolated")]),
            specials=LLAMA3_SPECIALS, ignore_merges=True, unreachable=[UNREACHABLE_WORD]),
        "qwen2": dict(
            normalizer=normalizers.NFC,
            pre_tokenizer=lambda: byte_level([split(Regex(QWEN2_PATTERN), "isolated")]),
            specials=QWEN2_SPECIALS, added=qwen2_added_tokens),
        "deepseek": dict(
            pre_tokenizer=lambda: byte_level([split(Regex(DEEPSEEK_NUMBERS), "isolated"),
                                              split(Regex(DEEPSEEK_CJK), "isolated"),
                                              split(Regex(DEEPSEEK_MAIN), "isolated")]),
            specials=DEEPSEEK_SPECIALS),
        "nfkc_removed": dict(
            normalizer=normalizers.NFKC,
            pre_tokenizer=lambda: byte_level([split(Regex(r"\s+"), "removed")]),
            specials=[ENDOFTEXT]),
        "merged_prev": dict(
            pre_tokenizer=lambda: byte_level([split(Regex(r"[.,;:!?]+"), "merged_with_previous")]),
            specials=[ENDOFTEXT]),
        # A plain-string pattern ({"String": " "} in the file), each space its own delimiter.
        "merged_next": dict(
            pre_tokenizer=lambda: byte_level([split(" ", "merged_with_next")]),
            specials=[ENDOFTEXT]),
        "contiguous": dict(
            pre_tokenizer=lambda: byte_level([split(Regex(r"[0-9]"), "contiguous")]),
            specials=[ENDOFTEXT]),
        # invert: the non-letter runs become the delimiters, each glued to the word before it.
        "inverted": dict(
            pre_tokenizer=lambda: byte_level([split(Regex(r"\p{L}+"), "merged_with_previous",
                                                    invert=True)]),
            specials=[ENDOFTEXT]),
    }


def train(spec, corpus):
    """A trained tokenizer; every byte character is in the alphabet so nothing is unknown."""
    tok = Tokenizer(models.BPE(ignore_merges=spec.get("ignore_merges", False)))
    if "normalizer" in spec:
        # Before any added token: normalized added tokens are matched in normalized form.
        tok.normalizer = spec["normalizer"]()
    tok.pre_tokenizer = spec["pre_tokenizer"]()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=MIN_FREQUENCY, special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    if "added" in spec:
        tok.add_tokens(spec["added"]())
    return tok


def byte_level_form(text):
    """How `text` is spelled in a byte-level vocabulary (space -> 'Ġ', ...)."""
    byte_level_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    pieces = byte_level_only.pre_tokenize_str(text)
    return "".join(piece for piece, _ in pieces)


def add_unreachable_word(data, text):
    """Give `text` the next free id in model.vocab without a merge that builds it."""
    vocab = data["model"]["vocab"]
    word = byte_level_form(text)
    if word in vocab:
        print(f"note: {text!r} was learnt by training, so it does not test ignore_merges")
        return
    ids = list(vocab.values()) + [token["id"] for token in data["added_tokens"]]
    vocab[word] = max(ids) + 1


def tokenizer_json(spec, corpus):
    """The trained tokenizer as JSON data, with the edits training cannot express."""
    data = json.loads(train(spec, corpus).to_str())
    # Set in the file whatever training did with the flag; checked again after reloading.
    data["model"]["ignore_merges"] = spec.get("ignore_merges", False)
    for text in spec.get("unreachable", []):
        add_unreachable_word(data, text)
    return data


def dump_json(data):
    """Compact JSON like the library's own pretty=False output."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def check_reloaded(tok, data, path):
    """The C++ reader trusts the file; fail here if the library reads it differently."""
    for token in data["added_tokens"]:
        if tok.token_to_id(token["content"]) != token["id"]:
            sys.exit(f"{path}: added token {token['content']!r} reloads with another id")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["model"]["ignore_merges"] != data["model"]["ignore_merges"]:
        sys.exit(f"{path}: model.ignore_merges did not survive saving")


def save(outdir, name, data):
    """Write NAME.json through the library (its exact format) and return it as reloaded."""
    path = outdir / f"{name}.json"
    Tokenizer.from_str(dump_json(data)).save(str(path), pretty=False)
    tok = Tokenizer.from_file(str(path))
    check_reloaded(tok, data, path)
    return tok


def swap_merges_format(merges):
    """[["a","b"], ...] <-> ["a b", ...]: the library reads both, files in the wild hold both."""
    if all(isinstance(merge, str) for merge in merges):
        return [merge.split(" ") for merge in merges]
    if any(" " in part for merge in merges for part in merge):
        sys.exit("a merge part holds a space: it has no 'a b' form")
    return [" ".join(merge) for merge in merges]


def save_other_merges_format(outdir, name, texts, reference):
    """NAME_legacy_merges.json: NAME.json with merges in the other format, written by us since
    the library always writes its own; it must encode exactly as NAME.json does."""
    data = json.loads((outdir / f"{name}.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = swap_merges_format(data["model"]["merges"])
    path = outdir / f"{name}_legacy_merges.json"
    path.write_text(dump_json(data), encoding="utf-8")
    tok = Tokenizer.from_file(str(path))
    for text in texts:
        if encode(tok, text) != encode(reference, text):
            sys.exit(f"{path}: encodes {text!r} unlike {name}.json")
    return tok


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def cases(tok, texts):
    out = []
    for text in texts:
        ids = encode(tok, text)
        out.append({"text": text, "ids": ids,
                    "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def report_unreachable(name, tok):
    """Say whether the unreachable word came out whole: it should for llama3 only."""
    word_id = tok.token_to_id(byte_level_form(UNREACHABLE_WORD))
    if word_id is not None:
        whole = encode(tok, UNREACHABLE_WORD) == [word_id]
        print(f"  {name}: {UNREACHABLE_WORD!r} is {'one token' if whole else 'built from merges'}")


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: python3 {argv[0]} OUTDIR")
    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    documents = read_corpus(REPO_ROOT)
    corpus = documents + TEXTS
    texts = TEXTS + corpus_samples(documents)
    built = {}
    for name, spec in specs().items():
        built[name] = save(outdir, name, tokenizer_json(spec, corpus))
    built["gpt2_legacy_merges"] = save_other_merges_format(outdir, "gpt2", texts, built["gpt2"])
    expected = {
        "tokenizers_version": tokenizers.__version__,
        "corpus_sha256": hashlib.sha256("\0".join(documents).encode("utf-8")).hexdigest(),
        "vocab_sizes": {name: tok.get_vocab_size(with_added_tokens=True)
                        for name, tok in built.items()},
        "cases": {name: cases(tok, texts) for name, tok in built.items()},
    }
    (outdir / "expected.json").write_text(
        json.dumps(expected, ensure_ascii=False, sort_keys=True, indent=None), encoding="utf-8")
    for name, tok in built.items():
        size = (outdir / f"{name}.json").stat().st_size
        print(f"{name}: vocab {expected['vocab_sizes'][name]}, {size} bytes")
        report_unreachable(name, tok)
    print(f"expected.json: {len(texts)} texts, {(outdir / 'expected.json').stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv)
