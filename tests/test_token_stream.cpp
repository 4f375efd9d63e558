// Token files read by window and written by streaming (issue 13, docs/data.md "Token files larger
// than memory"): the windowed reader gives the batches of the in-memory one bit for bit, whatever
// the stored type and layout, and streaming prepare-data writes the tokens the in-memory
// preparation wrote. Small files only: the large-file run is bench/large_tokens/run.sh.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

class TokenStreamTest : public test::TempFolderTest {
 protected:
  TokenStreamTest() : TempFolderTest("sy_test_token_stream") {}
};

using test::expect_error;

// Tokens spread over the whole vocabulary, the largest id included.
std::vector<int32_t> spread_tokens(int64_t n, int64_t vocab_size, uint32_t salt) {
  std::vector<int32_t> tokens(n);
  uint32_t state = 2463534242u ^ salt;
  for (int64_t k = 0; k < n; k++) {
    state ^= state << 13, state ^= state >> 17, state ^= state << 5;
    tokens[k] = static_cast<int32_t>(state % static_cast<uint32_t>(vocab_size));
  }
  if (n > 0) tokens[n - 1] = static_cast<int32_t>(vocab_size - 1);
  return tokens;
}

// Every training group of `steps` steps, every validation batch (the last included) and the
// validation set of the trainer: the same from `on_disk` as from the vectors, bit for bit.
void expect_same_batches(const std::vector<int32_t>& train, const std::vector<int32_t>& val,
                         const TokenFile& on_disk, int64_t seq_len, int64_t steps) {
  ASSERT_EQ(on_disk.train->size(), static_cast<int64_t>(train.size()));
  ASSERT_EQ(on_disk.val->size(), static_cast<int64_t>(val.size()));
  const int64_t B = 3;
  const StepSampler in_memory(train, seq_len, 77), windowed(on_disk.train, seq_len, 77);
  std::vector<int32_t> inputs(B * seq_len), targets(B * seq_len);
  std::vector<int32_t> window_inputs(B * seq_len, -7), window_targets(B * seq_len, -7);
  bool reached_end = false;  // some sequence's target is the split's last token
  for (int64_t step = 0; step < steps; step++) {
    for (int64_t group = 0; group < 2; group++) {
      in_memory.group(step, group, B, inputs.data(), targets.data());
      std::fill(window_inputs.begin(), window_inputs.end(), -7);  // poison
      std::fill(window_targets.begin(), window_targets.end(), -7);
      windowed.group(step, group, B, window_inputs.data(), window_targets.data());
      ASSERT_EQ(window_inputs, inputs) << "step " << step << " group " << group;
      ASSERT_EQ(window_targets, targets) << "step " << step << " group " << group;
      for (int64_t b = 0; b < B; b++)
        reached_end |= in_memory.offset(step, group * B + b) ==
                       static_cast<int64_t>(train.size()) - seq_len - 1;
    }
  }
  EXPECT_TRUE(reached_end) << "the draws never reached the split's last window";

  const int64_t batches = max_validation_batches(static_cast<int64_t>(val.size()), B, seq_len);
  ASSERT_GT(batches, 0);
  for (int64_t j = 0; j < batches; j++) {
    validation_batch(val, j, B, seq_len, inputs.data(), targets.data());
    std::fill(window_inputs.begin(), window_inputs.end(), -7);
    validation_batch(*on_disk.val, j, B, seq_len, window_inputs.data(), window_targets.data());
    ASSERT_EQ(window_inputs, inputs) << "validation batch " << j;
    ASSERT_EQ(window_targets, targets) << "validation batch " << j;
  }
  expect_error([&] { validation_batch(*on_disk.val, batches, B, seq_len, inputs.data(),
                                      targets.data()); },
               {"validation split has " + std::to_string(val.size()) + " tokens"});

  // The trainer's validation set: a prefix of /val, whole when asked for more than it holds.
  const int64_t sequences = max_validation_batches(static_cast<int64_t>(val.size()), 1, seq_len);
  const std::vector<int32_t> set = read_validation_tokens(*on_disk.val, sequences, seq_len);
  EXPECT_EQ(set, std::vector<int32_t>(val.begin(), val.begin() + sequences * seq_len + 1));
  EXPECT_EQ(read_validation_tokens(*on_disk.val, sequences + 5, seq_len), val);
  EXPECT_TRUE(read_validation_tokens(*on_disk.val, 0, seq_len).empty());

  // The last partial region: windows that end at the split's last token.
  for (int64_t count : {int64_t{1}, int64_t{5}, static_cast<int64_t>(train.size())}) {
    std::vector<int32_t> tail(count, -7);
    on_disk.train->read(static_cast<int64_t>(train.size()) - count, count, tail.data());
    EXPECT_EQ(tail, std::vector<int32_t>(train.end() - count, train.end()));
  }
  std::vector<int32_t> one(2);
  expect_error([&] { on_disk.train->read(static_cast<int64_t>(train.size()) - 1, 2, one.data()); },
               {"/train", "outside [0, " + std::to_string(train.size()) + ")"});
  expect_error([&] { on_disk.val->read(-1, 1, one.data()); }, {"/val"});
}

// write_token_file's contiguous layout: read with pread, in each stored type.
TEST_F(TokenStreamTest, WindowsMatchInMemoryForEveryStoredType) {
  for (const int64_t vocab_size : {int64_t{256}, int64_t{1000}, int64_t{70001}}) {
    SCOPED_TRACE("vocab_size " + std::to_string(vocab_size));
    const std::vector<int32_t> train = spread_tokens(517, vocab_size, 1);
    const std::vector<int32_t> val = spread_tokens(211, vocab_size, 2);
    const std::string file = path("tokens_" + std::to_string(vocab_size) + ".h5");
    write_token_file(file, train, val, vocab_size, "bytes");
    const TokenFile on_disk = open_token_file(file);
    EXPECT_EQ(on_disk.vocab_size, vocab_size);
    EXPECT_EQ(on_disk.tokenizer, "bytes");
    expect_same_batches(train, val, on_disk, 16, 400);
  }
}

// A file this project does not write (h5py's chunked, compressed or big-endian datasets) goes
// through HDF5 hyperslabs with the same result.
TEST_F(TokenStreamTest, WindowsMatchInMemoryThroughHdf5Hyperslabs) {
  const int64_t vocab_size = 5000;
  const std::vector<int32_t> train = spread_tokens(1031, vocab_size, 3);
  const std::vector<int32_t> val = spread_tokens(190, vocab_size, 4);
  const std::string file = path("chunked.h5");
  write_token_file(file, {1}, {1}, vocab_size, "bpe-5000");  // the attributes
  {
    hid_t h5 = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(h5, 0);
    ASSERT_GE(H5Ldelete(h5, "/train", H5P_DEFAULT), 0);
    ASSERT_GE(H5Ldelete(h5, "/val", H5P_DEFAULT), 0);
    const auto write = [&](const char* name, const std::vector<int32_t>& tokens, hid_t type,
                           bool deflate) {
      const hsize_t length = tokens.size(), chunk = 64;
      hid_t space = H5Screate_simple(1, &length, nullptr);
      hid_t create = H5Pcreate(H5P_DATASET_CREATE);
      ASSERT_GE(H5Pset_chunk(create, 1, &chunk), 0);
      if (deflate && H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) {
        ASSERT_GE(H5Pset_deflate(create, 4), 0);
      }
      hid_t dataset = H5Dcreate2(h5, name, type, space, H5P_DEFAULT, create, H5P_DEFAULT);
      ASSERT_GE(dataset, 0);
      ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data()),
                0);
      H5Dclose(dataset), H5Pclose(create), H5Sclose(space);
    };
    write("/train", train, H5T_STD_I64BE, true);
    write("/val", val, H5T_STD_U16LE, false);
    H5Fclose(h5);
  }
  const TokenFile on_disk = open_token_file(file);
  expect_same_batches(train, val, on_disk, 16, 400);
  // And several threads at once (ranks of one process share the HDF5 library).
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; t++)
    threads.emplace_back([&, t] {
      std::vector<int32_t> window(40);
      for (int64_t start = t; start + 40 <= static_cast<int64_t>(train.size()); start += 13) {
        on_disk.train->read(start, 40, window.data());
        if (!std::equal(window.begin(), window.end(), train.begin() + start)) mismatches[t]++;
      }
    });
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// The range check moved from open time to read time: the file opens, the window with the bad
// token throws with the message read_token_file gives.
TEST_F(TokenStreamTest, TokenOutsideVocabularyIsFoundWhenRead) {
  const std::string file = path("bad.h5");
  write_token_file(file, {1, 2, 3, 4}, {5, 255}, 256, "bytes");
  {
    hid_t h5 = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(h5, 0);
    const int64_t small = 100;  // vocab_size 100: token 255 at /val[1] is now outside
    hid_t attribute = H5Aopen(h5, "vocab_size", H5P_DEFAULT);
    ASSERT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &small), 0);
    H5Aclose(attribute), H5Fclose(h5);
  }
  const TokenFile on_disk = open_token_file(file);
  std::vector<int32_t> window(2);
  on_disk.val->read(0, 1, window.data());
  EXPECT_EQ(window[0], 5);
  expect_error([&] { on_disk.val->read(0, 2, window.data()); },
               {file, "token 255 at /val[1] is outside [0, 100)"});
  expect_error([&] { read_token_file(file); }, {file, "token 255 at /val[1] is outside [0, 100)"});
  expect_error([&] { open_token_file(path("missing.h5")); }, {"missing.h5", "no such file"});
}

// The streaming writer writes what write_token_file writes, and leaves nothing when unfinished.
TEST_F(TokenStreamTest, StreamingWriterMatchesWholeWriter) {
  for (const int64_t vocab_size : {int64_t{256}, int64_t{65536}, int64_t{100000}}) {
    const std::vector<int32_t> train = spread_tokens(10007, vocab_size, 5);
    const std::vector<int32_t> val = spread_tokens(33, vocab_size, 6);
    const std::string file = path("streamed_" + std::to_string(vocab_size) + ".h5");
    {
      TokenFileWriter writer(file, vocab_size, "sentencepiece", "model bytes", "tok.model");
      // Interleaved and uneven appends, an empty one included.
      writer.append_val(val.data(), 10);
      for (size_t start = 0; start < train.size(); start += 999)
        writer.append_train(train.data() + start, std::min<size_t>(999, train.size() - start));
      writer.append_val(val.data() + 10, 0);
      writer.append_val(val.data() + 10, static_cast<int64_t>(val.size()) - 10);
      EXPECT_FALSE(fs::exists(file));
      writer.finish();
    }
    const TokenData data = read_token_file(file);
    EXPECT_EQ(data.train, train);
    EXPECT_EQ(data.val, val);
    EXPECT_EQ(data.vocab_size, vocab_size);
    EXPECT_EQ(data.tokenizer, "sentencepiece");
    EXPECT_EQ(data.tokenizer_model, "model bytes");
    EXPECT_EQ(data.tokenizer_model_name, "tok.model");
  }
  {
    TokenFileWriter writer(path("unfinished.h5"), 256, "bytes");
    const std::vector<int32_t> tokens = {1, 2, 300};
    expect_error([&] { writer.append_train(tokens.data(), 3); },
                 {"unfinished.h5", "cannot write token 300 at train[2]"});
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(folder_))
    EXPECT_EQ(entry.path().filename().string().find("unfinished"), std::string::npos)
        << entry.path() << " left behind";
}

// prepare-data streams in pieces; the tokens are those of the whole-text preparation (the split
// at floor((1 - f) * bytes) of the concatenated text, then each part encoded), for any piece size.
TEST_F(TokenStreamTest, StreamedPrepareMatchesWholeText) {
  write_file("brown/ca01", "\tThe/at Fulton/np-tl ``/`` jury/nn ''/'' said/vbd ./.\n\n"
                           "  It/pps a/b/c said/vbd\n");
  write_file("brown/ca02", "Only/rb one/cd line/nn without/in newline/nn");
  write_file("brown/README", "not corpus");
  write_file("text/a.txt", "first file\nwith two lines\n");
  write_file("text/b.txt", std::string(3000, 'x') + "\nend");
  const std::string brown_text =
      brown_file_to_text("\tThe/at Fulton/np-tl ``/`` jury/nn ''/'' said/vbd ./.\n\n"
                         "  It/pps a/b/c said/vbd\n") +
      brown_file_to_text("Only/rb one/cd line/nn without/in newline/nn");
  const std::string plain_text = "first file\nwith two lines\n" + std::string(3000, 'x') + "\nend";
  const auto bytes_of = [](const std::string& text) {
    return std::vector<int32_t>(text.begin(), text.end());
  };
  struct Case {
    std::string format, input, text;
  };
  for (const Case& c : {Case{"brown", path("brown"), brown_text},
                        Case{"text", path("text"), plain_text}}) {
    for (const int64_t piece : {int64_t{1}, int64_t{7}, int64_t{4096}, int64_t{16} << 20}) {
      SCOPED_TRACE(c.format + ", pieces of " + std::to_string(piece) + " bytes");
      PrepareOptions options;
      options.inputs = {c.input};
      options.format = c.format;
      options.output = path(c.format + ".h5");
      options.tokenizer = "bytes";
      options.val_fraction = 0.3;
      options.encode_piece_bytes = piece;
      const PrepareStats stats = prepare_data(options);
      const size_t train_bytes = static_cast<size_t>(std::floor(0.7 * c.text.size()));
      const TokenData data = read_token_file(options.output);
      EXPECT_EQ(data.train, bytes_of(c.text.substr(0, train_bytes)));
      EXPECT_EQ(data.val, bytes_of(c.text.substr(train_bytes)));
      EXPECT_EQ(stats.bytes, static_cast<int64_t>(c.text.size()));
      EXPECT_EQ(stats.train_tokens, static_cast<int64_t>(train_bytes));
      EXPECT_FALSE(fs::exists(options.output + ".tmp"));
      EXPECT_FALSE(fs::exists(options.output + ".tmp.train"));
    }
  }
  // jsonl: whole documents, "\n" after each, the last floor(f * documents) are validation.
  write_file("docs.jsonl", "{\"text\": \"alpha\"}\n\n{\"text\": \"be\\nta\"}\n{\"text\": \"gamma\"}\n"
                           "{\"text\": \"delta\"}\n");
  PrepareOptions jsonl;
  jsonl.inputs = {path("docs.jsonl")};
  jsonl.format = "jsonl";
  jsonl.output = path("jsonl.h5");
  jsonl.val_fraction = 0.5;
  jsonl.encode_piece_bytes = 3;
  const PrepareStats stats = prepare_data(jsonl);
  EXPECT_EQ(stats.documents, 4);
  EXPECT_EQ(stats.val_documents, 2);
  const TokenData data = read_token_file(jsonl.output);
  EXPECT_EQ(data.train, bytes_of("alpha\nbe\nta\n"));
  EXPECT_EQ(data.val, bytes_of("gamma\ndelta\n"));

  // A failure after writing began (a bad token in val.bin, after train.bin was streamed) leaves
  // no file at all.
  const std::string train_bin = {1, 0, 2, 0}, val_bin = {1, 0, 60, 0};  // uint16 little-endian
  write_file("nanogpt/train.bin", train_bin);
  write_file("nanogpt/val.bin", val_bin);
  PrepareOptions nanogpt;
  nanogpt.inputs = {path("nanogpt")};
  nanogpt.format = "nanogpt";
  nanogpt.vocab_size = 50;
  nanogpt.output = path("bad.h5");
  expect_error([&] { prepare_data(nanogpt); }, {"val.bin", "token 60 at position 1"});
  for (const fs::directory_entry& entry : fs::directory_iterator(folder_))
    EXPECT_EQ(entry.path().filename().string().find("bad.h5"), std::string::npos)
        << entry.path() << " left behind";
}

}  // namespace
}  // namespace sy
