#include "trainer/inspect.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "data/prepare.h"
#include "data/token_file.h"
#include "model/tensor.h"
#include "trainer/checkpoint.h"

namespace sy {

namespace {

// Every line of `text` indented by two spaces.
std::string indent(const std::string& text) {
  std::string out;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    out += "  " + text.substr(begin, end - begin) + "\n";
    begin = end + 1;
  }
  return out;
}

// "sentencepiece (tok.model, vocab 8000, model 370212 bytes)", "bytes (vocab 256)", or for a
// label a token format stored, what it is: a checkpoint's tokenizer and a token file's alike.
std::string describe_tokenizer(const TokenData& tokenizer) {
  if (!tokenizer.chat_template.empty()) {  // sft conversations: the format they were rendered in
    TokenData without = tokenizer;
    without.chat_template.clear();
    without.chat_system.clear();
    const std::string system =
        tokenizer.chat_system.empty()
            ? std::string()
            : ", system message " + nlohmann::json(tokenizer.chat_system).dump();
    return describe_tokenizer(without) + ", chat template " + tokenizer.chat_template + system;
  }
  if (!tokenizer.tokenizer_model.empty())
    return tokenizer.tokenizer + " (" + tokenizer.tokenizer_model_name + ", vocab " +
           std::to_string(tokenizer.vocab_size) + ", model " +
           std::to_string(tokenizer.tokenizer_model.size()) + " bytes)";
  try {
    return tokenizer.tokenizer + " (vocab " +
           std::to_string(make_tokenizer(tokenizer.tokenizer)->vocab_size()) + ")";
  } catch (const std::exception&) {  // a label a token format stored, with no model to decode
    return tokenizer.tokenizer + " (a label only: no model to decode with)";
  }
}

// The checkpoint's tokenizer line, or what eval and generate fall back to when it carries none.
std::string tokenizer_line(const std::string& path) {
  TokenData tokenizer;
  if (!read_checkpoint_tokenizer(path, tokenizer))
    return "tokenizer: none stored (an older checkpoint: eval and generate use data.path's)";
  return "tokenizer: " + describe_tokenizer(tokenizer);
}

// "<kind>: <path>" and, when the file system says, "file_size: N bytes".
void print_file_lines(const char* kind, const std::string& path, std::FILE* out) {
  std::error_code error;
  const auto bytes = std::filesystem::file_size(path, error);
  std::fprintf(out, "%s: %s\n", kind, path.c_str());
  if (!error) std::fprintf(out, "file_size: %" PRIuMAX " bytes\n", static_cast<uintmax_t>(bytes));
}

// "1657 of 9136 tokens trained (18.1%)": the ones of a split's mask, read a window at a time.
std::string trained_share(const TokenSource& split) {
  constexpr int64_t kWindow = int64_t{1} << 20;
  std::vector<uint8_t> mask;
  int64_t trained = 0;
  for (int64_t start = 0; start < split.size(); start += kWindow) {
    mask.resize(std::min(kWindow, split.size() - start));
    split.read_mask(start, static_cast<int64_t>(mask.size()), mask.data());
    trained += std::count(mask.begin(), mask.end(), uint8_t{1});
  }
  char text[96];
  std::snprintf(text, sizeof text, "%lld of %lld tokens trained (%.1f%%)",
                static_cast<long long>(trained), static_cast<long long>(split.size()),
                split.size() > 0 ? 100.0 * trained / split.size() : 0.0);
  return text;
}

// Datasets that are not tensors of the model or the optimizer.
bool is_tensor(const std::string& dataset) { return dataset != "/tokenizer_model"; }

}  // namespace

void inspect_token_file(const std::string& path, std::FILE* out) {
  const TokenFile file = open_token_file(path);
  print_file_lines("token file", path, out);
  std::fprintf(out, "vocab_size: %lld\n", static_cast<long long>(file.vocab_size));
  const TokenData tokenizer = tokenizer_data(file);
  std::fprintf(out, "tokenizer: %s\n", describe_tokenizer(tokenizer).c_str());
  std::fprintf(out, "train: %lld tokens\nval: %lld tokens\n",
               static_cast<long long>(file.train->size()),
               static_cast<long long>(file.val->size()));
  // Document boundaries (docs/data.md, "Document masking"); no line for a file without them.
  if (const std::vector<int64_t>* train = file.train->document_starts())
    std::fprintf(out, "documents: train %zu, val %zu\n", train->size(),
                 file.val->document_starts()->size());
  if (!file.train->masked()) {
    std::fprintf(out, "loss mask: none (every token is a target)\n");
    return;
  }
  std::fprintf(out, "loss mask: train %s; val %s\n", trained_share(*file.train).c_str(),
               trained_share(*file.val).c_str());
}

void inspect_checkpoint(const std::string& path, std::FILE* out) {
  const CheckpointHeader header = read_checkpoint_header(path);
  print_file_lines("checkpoint", path, out);
  std::fprintf(out, "format_version: %lld\nstep: %lld\noptimizer_step: %lld\n",
               static_cast<long long>(header.format_version), static_cast<long long>(header.step),
               static_cast<long long>(header.optimizer_step));
  std::fprintf(out, "%s\n", tokenizer_line(path).c_str());
  std::fprintf(out, "provenance:\n%s", indent(header.provenance).c_str());
  std::fprintf(out, "config:\n%s", indent(header.config).c_str());
  std::fprintf(out, "tensors:\n");
  std::fflush(out);

  size_t path_width = 0, shape_width = 0;
  int64_t model_values = 0, all_values = 0, count = 0;
  scan_checkpoint_tensors(
      path,
      [&](const std::vector<TensorInfo>& tensors) {
        for (const TensorInfo& info : tensors) {
          if (!is_tensor(info.path)) continue;
          path_width = std::max(path_width, info.path.size());
          shape_width = std::max(shape_width, shape_str(info.shape).size());
        }
      },
      [&](const TensorInfo& info) {
        if (!is_tensor(info.path)) return;
        const int64_t numel = shape_numel(info.shape);
        all_values += numel;
        if (info.path.rfind("/model/", 0) == 0) model_values += numel;
        ++count;
        std::fprintf(out, "  %-*s  %-*s  norm %.6g\n", static_cast<int>(path_width),
                     info.path.c_str(), static_cast<int>(shape_width),
                     shape_str(info.shape).c_str(), info.norm);
        std::fflush(out);  // streamed: one line per tensor as it is read
      });
  std::fprintf(out, "%lld tensors: %lld model parameters, %lld values in all\n",
               static_cast<long long>(count), static_cast<long long>(model_values),
               static_cast<long long>(all_values));
}

}  // namespace sy
