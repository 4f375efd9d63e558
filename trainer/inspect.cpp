#include "trainer/inspect.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "data/prepare.h"
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

// "tokenizer: sentencepiece (tok.model, vocab 8000, model 370212 bytes)", "tokenizer: bytes
// (vocab 256)", or what eval and generate fall back to when the checkpoint carries none.
std::string tokenizer_line(const std::string& path) {
  TokenData tokenizer;
  if (!read_checkpoint_tokenizer(path, tokenizer))
    return "tokenizer: none stored (an older checkpoint: eval and generate use data.path's)";
  if (!tokenizer.tokenizer_model.empty())
    return "tokenizer: " + tokenizer.tokenizer + " (" + tokenizer.tokenizer_model_name +
           ", vocab " + std::to_string(tokenizer.vocab_size) + ", model " +
           std::to_string(tokenizer.tokenizer_model.size()) + " bytes)";
  try {
    return "tokenizer: " + tokenizer.tokenizer + " (vocab " +
           std::to_string(make_tokenizer(tokenizer.tokenizer)->vocab_size()) + ")";
  } catch (const std::exception&) {  // a label a token format stored, with no model to decode
    return "tokenizer: " + tokenizer.tokenizer + " (a label only: no model to decode with)";
  }
}

// Datasets that are not tensors of the model or the optimizer.
bool is_tensor(const std::string& dataset) { return dataset != "/tokenizer_model"; }

}  // namespace

void inspect_checkpoint(const std::string& path, std::FILE* out) {
  const CheckpointHeader header = read_checkpoint_header(path);
  std::error_code error;
  const auto bytes = std::filesystem::file_size(path, error);
  std::fprintf(out, "checkpoint: %s\n", path.c_str());
  if (!error) std::fprintf(out, "file_size: %" PRIuMAX " bytes\n", static_cast<uintmax_t>(bytes));
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
