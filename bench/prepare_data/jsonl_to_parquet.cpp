// The bench corpus as Parquet: each JSON line's "text" one row of a string column "text", laid out
// as pyarrow lays out a column of unique documents (its dictionary abandoned: PLAIN pages of about
// 1 MiB, row groups of 64 pages), with the tests' writer (tests/parquet_files.h). The Parquet rows
// of bench/prepare_data/run.sh: prepare-data reads the same documents as from the JSON lines.
//   jsonl_to_parquet IN.jsonl OUT.parquet [CODEC]     (CODEC: none, snappy (default), zstd, ...)
#include <algorithm>
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/parquet_files.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: jsonl_to_parquet IN.jsonl OUT.parquet [CODEC]\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1]);
    if (!in) throw std::runtime_error(std::string(argv[1]) + ": cannot open for reading");
    std::vector<std::string> documents;
    size_t bytes = 0;
    for (std::string line; std::getline(in, line);) {
      documents.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
      bytes += documents.back().size();
    }
    if (documents.empty()) throw std::runtime_error(std::string(argv[1]) + ": no documents");
    sy::test::ParquetLayout layout;
    layout.codec = argc > 3 ? argv[3] : "snappy";
    layout.rows_per_page = std::max<size_t>(1, (size_t{1} << 20) / (bytes / documents.size() + 1));
    layout.rows_per_group = 64 * layout.rows_per_page;
    std::ofstream out(argv[2], std::ios::binary | std::ios::trunc);
    out << sy::test::parquet_file(documents, layout);
    if (!out.flush()) throw std::runtime_error(std::string(argv[2]) + ": write failed");
    std::printf("%s: %zu rows, %zu bytes of text, %s, %zu rows a page\n", argv[2], documents.size(),
                bytes, layout.codec.c_str(), layout.rows_per_page);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "jsonl_to_parquet: %s\n", error.what());
    return 1;
  }
}
