// libFuzzer: the tokenizer.json reader and encoder (data/hf_tokenizer.h), two ways by the input's
// first byte:
//   '{'  the input is a tokenizer.json: loaded (as prepare-data --tokenizer or a token file's
//        /tokenizer_model would be), then made to encode and decode a fixed text. Every input
//        must end in a tokenizer or a std::exception.
//   else the input is text for a fixed Llama-3-style tokenizer (added tokens, Split, ByteLevel,
//        BPE with ignore_merges): text that is not UTF-8 must be refused with an exception, and
//        any other must come back byte for byte from decode(encode(text)) (no normalizer, no
//        stripping tokens: the encoding is lossless). A mismatch aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "bench/fuzz/fuzz_input.h"
#include "data/hf_tokenizer.h"

namespace {

using nlohmann::json;

// Bytes, a few merges of common English pairs, three special tokens and a single_word one.
json fixed_tokenizer() {
  json vocab = json::object();
  for (int byte = 0; byte < 256; byte++)
    vocab[sy::byte_level_piece(std::string(1, static_cast<char>(byte)))] = byte;
  json merges = json::array();
  const char* pairs[][2] = {{"t", "h"}, {"th", "e"}, {"Ġ", "the"}, {"i", "n"}, {"in", "g"},
                            {"e", "r"}, {"Ġ", "a"},  {"o", "n"},   {"Ċ", "Ċ"}};
  for (const auto& pair : pairs) {
    const std::string merged = std::string(pair[0]) + pair[1];
    if (!vocab.contains(merged)) vocab[merged] = static_cast<int>(vocab.size());
    merges.push_back(json::array({pair[0], pair[1]}));
  }
  vocab["Ġthere"] = static_cast<int>(vocab.size());  // only ignore_merges reaches it
  const int next = static_cast<int>(vocab.size());
  json added = json::array();
  const char* specials[] = {"<|begin_of_text|>", "<|eot_id|>", "<|im_start|>"};
  for (int k = 0; k < 3; k++)
    added.push_back(
        {{"id", next + k}, {"content", specials[k]}, {"special", true}, {"normalized", false}});
  added.push_back({{"id", next + 3},
                   {"content", "hello world"},
                   {"single_word", true},
                   {"special", false},
                   {"normalized", true}});
  const std::string pattern =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return {
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"},
               {"pattern", {{"Regex", pattern}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merges}}}};
}

std::unique_ptr<sy::Tokenizer> fixed;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const json spec = fixed_tokenizer();
  fixed = sy::load_hf_tokenizer(spec.dump(), "<|eot_id|>", "fixed");
  if (const char* dir = sy::fuzz::seed_dir()) {
    std::ofstream(std::string(dir) + "/tokenizer.json") << spec.dump();
    std::ofstream(std::string(dir) + "/text.txt")
        << "<|begin_of_text|>The THERE there, I'LL say hello world 12345 caf\xC3\xA9\n\n\t x";
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  if (!input.empty() && input[0] == '{') {
    try {
      const auto tokenizer = sy::load_hf_tokenizer(input, "", "fuzz.json");
      tokenizer->decode(tokenizer->encode("The there, I'LL say hello world 12345\n\n x"));
    } catch (const std::exception&) {
    }
    return 0;
  }
  std::vector<int32_t> ids;
  try {
    ids = fixed->encode(input);
  } catch (const std::exception&) {
    return 0;  // not UTF-8
  }
  if (fixed->decode(ids) != input) {
    std::fprintf(stderr, "decode(encode(text)) differs from the text\n");
    std::abort();
  }
  return 0;
}
