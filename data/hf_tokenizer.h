// Hugging Face tokenizers (a model folder's tokenizer.json) of the byte-level BPE kind: GPT-2,
// GPT-NeoX and OLMoE, Llama 3, Qwen2 and Qwen3, DeepSeek-V3. Encoding gives the ids that the
// `tokenizers` library gives for encode(text, add_special_tokens=False): added tokens matched in
// the text first, then the normalizer, the pre-tokenizer's splits, the byte-level alphabet and
// the BPE merges. Any part of a tokenizer.json that is not of this kind is refused when it is
// loaded, naming the key. See docs/data.md, "Hugging Face tokenizers".
#pragma once
#include <memory>
#include <string>

#include "data/prepare.h"

namespace sy {

// The `tokenizer` attribute of a token file or checkpoint whose ids came from a tokenizer.json;
// /tokenizer_model holds the JSON's bytes, and its attribute eos_token the EOS token's text.
inline constexpr const char* kHuggingFaceTokenizer = "huggingface";
inline constexpr const char* kHuggingFaceTokenizerFile = "tokenizer.json";

// False when Switchyard was built without ICU (the Unicode regular expressions and
// normalisation these tokenizers need); loading one then throws and says what to install.
bool hf_tokenizers_available();

// A tokenizer from the bytes of a tokenizer.json. `eos_token` is the text of its end-of-sequence
// token (tokenizer_config.json's eos_token), or empty for none; it must be in the vocabulary.
// `source` names where the bytes came from, for error messages.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_bytes,
                                             const std::string& eos_token,
                                             const std::string& source);

// `bytes` written in GPT-2's byte-level alphabet, as a byte-level tokenizer.json's vocabulary and
// merges write their pieces ("Ġthe" for " the").
std::string byte_level_piece(const std::string& bytes);

// The eos_token of the tokenizer_config.json beside `tokenizer_json_path` (a string, or an object
// with `content`), or empty when there is no such file or key.
std::string eos_token_beside(const std::string& tokenizer_json_path);

}  // namespace sy
