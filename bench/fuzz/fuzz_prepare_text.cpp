// libFuzzer: bytes -> file -> prepare-data --format jsonl, sft and text (bytes tokenizer), each
// on 1 thread and on 3 with pieces of 61 bytes (runs of lines of about 61 bytes: many tasks in
// flight at once). Differential: the two runs must both write the same tokens, document starts
// and loss masks, or both throw the same message (the first error in input order, whatever the
// threads). A crash, a sanitizer report, a hang or a difference is a finding. Seeds: JSON lines
// for both formats, plain, gzip and zstd (the compressed readers see every input that starts
// with their magic bytes).
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench/fuzz/fuzz_input.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "tests/compressed_files.h"

namespace {

// What a run of prepare-data ended in: its token file's contents, or its error.
struct Outcome {
  std::string error;
  sy::TokenData tokens;
  std::vector<uint8_t> train_mask;
};

Outcome prepare(const std::string& input, const char* format, int threads) {
  Outcome outcome;
  sy::PrepareOptions options;
  options.inputs = {input};
  options.format = format;
  options.output = input + "." + std::to_string(threads) + ".h5";
  options.threads = threads;
  options.encode_piece_bytes = 61;
  options.val_fraction = 0.3;
  try {
    sy::prepare_data(options);
    outcome.tokens = sy::read_token_file(options.output);
    const sy::TokenFile opened = sy::open_token_file(options.output);
    if (std::string(format) == "sft") {
      outcome.train_mask.resize(static_cast<size_t>(opened.train->size()));
      opened.train->read_mask(0, opened.train->size(), outcome.train_mask.data());
    }
  } catch (const std::exception& error) {
    outcome.error = error.what();
  }
  std::filesystem::remove(options.output);
  return outcome;
}

bool same(const Outcome& a, const Outcome& b) {
  return a.error == b.error && a.tokens.train == b.tokens.train && a.tokens.val == b.tokens.val &&
         a.tokens.train_doc_starts == b.tokens.train_doc_starts &&
         a.tokens.val_doc_starts == b.tokens.val_doc_starts && a.train_mask == b.train_mask;
}

void write_seed(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = sy::fuzz::seed_dir()) {
    std::string jsonl;
    for (int d = 0; d < 12; ++d)
      jsonl += "{\"text\": \"document " + std::to_string(d) + std::string(d * 7, 'x') +
               "\\nline two\", \"prompt\": \"q" + std::to_string(d) + "\", \"response\": \"a\"}\n" +
               (d % 4 == 3 ? "  \n" : "");
    const std::string segments =
        "{\"segments\": [{\"text\": \"U: hi\", \"train\": false}, {\"text\": \" yo\", "
        "\"train\": true}]}\n";
    const std::string base = std::string(dir) + "/";
    write_seed(base + "documents.jsonl", jsonl);
    write_seed(base + "segments.jsonl", segments + jsonl);
    // The same objects as one JSON array: pretty-printed, and on one line.
    std::string pretty = "[\n", one_line = "[";
    for (size_t start = 0, end; (end = jsonl.find('\n', start)) != std::string::npos;
         start = end + 1) {
      const std::string line = jsonl.substr(start, end - start);
      if (line.find('{') == std::string::npos) continue;
      pretty += std::string(pretty.size() > 2 ? ",\n" : "") + "    " + line;
      one_line += std::string(one_line.size() > 1 ? "," : "") + line;
    }
    write_seed(base + "documents_pretty.json", pretty + "\n]\n");
    write_seed(base + "documents_one_line.json", "\xEF\xBB\xBF" + one_line + "]");
#ifdef SY_HAVE_ZLIB
    write_seed(base + "documents.jsonl.gz", sy::test::gzip_member(jsonl.substr(0, 300)) +
                                                sy::test::gzip_member(jsonl.substr(300)));
#endif
#ifdef SY_HAVE_ZSTD
    write_seed(base + "documents.jsonl.zst", sy::test::zstd_frame(jsonl));
#endif
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sy::fuzz::write_input("prepare_text", ".jsonl", data, size);
  for (const char* format : {"jsonl", "sft", "text"}) {
    const Outcome one = prepare(path, format, 1);
    const Outcome three = prepare(path, format, 3);
    if (!same(one, three)) std::abort();  // the thread count changed the result
  }
  return 0;
}
