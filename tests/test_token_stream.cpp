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

// ---- Document starts (docs/data.md, "Token file"): /train_doc_starts and /val_doc_starts ----

// The element type HDF5 stores dataset `name` of `file` in.
bool stored_as_int64(const std::string& file, const char* name) {
  hid_t h5 = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t dataset = H5Dopen2(h5, name, H5P_DEFAULT);
  hid_t type = H5Dget_type(dataset);
  const bool int64 = H5Tequal(type, H5T_STD_I64LE) > 0;
  H5Tclose(type), H5Dclose(dataset), H5Fclose(h5);
  return int64;
}

// write_token_file and read_token_file, TokenFileWriter and open_token_file (with and without a
// loss mask): the starts written are the starts read, from every reader.
TEST_F(TokenStreamTest, DocumentStartsRoundTrip) {
  TokenData data;
  data.train = spread_tokens(40, 1000, 7);
  data.val = spread_tokens(9, 1000, 8);
  data.vocab_size = 1000;
  data.tokenizer = "bpe-1000";
  data.documents = true;
  data.train_doc_starts = {0, 1, 17, 39};
  data.val_doc_starts = {0};
  const std::string whole = path("whole.h5");
  write_token_file(whole, data);
  const TokenData read = read_token_file(whole);
  EXPECT_TRUE(read.documents);
  EXPECT_EQ(read.train, data.train);
  EXPECT_EQ(read.train_doc_starts, data.train_doc_starts);
  EXPECT_EQ(read.val_doc_starts, data.val_doc_starts);
  EXPECT_TRUE(stored_as_int64(whole, "/train_doc_starts"));
  EXPECT_TRUE(stored_as_int64(whole, "/val_doc_starts"));
  const TokenFile opened = open_token_file(whole);
  ASSERT_NE(opened.train->document_starts(), nullptr);
  ASSERT_NE(opened.val->document_starts(), nullptr);
  EXPECT_EQ(*opened.train->document_starts(), data.train_doc_starts);
  EXPECT_EQ(*opened.val->document_starts(), data.val_doc_starts);

  // An empty split has an empty dataset.
  data.val.clear();
  data.val_doc_starts.clear();
  write_token_file(whole, data);
  EXPECT_TRUE(read_token_file(whole).val_doc_starts.empty());
  ASSERT_NE(open_token_file(whole).val->document_starts(), nullptr);
  EXPECT_TRUE(open_token_file(whole).val->document_starts()->empty());

  // Without documents (the old write_token_file, or documents false) the file records none.
  data.documents = false;
  write_token_file(whole, data);
  EXPECT_FALSE(read_token_file(whole).documents);
  EXPECT_TRUE(read_token_file(whole).train_doc_starts.empty());
  EXPECT_EQ(open_token_file(whole).train->document_starts(), nullptr);
  EXPECT_EQ(open_token_file(whole).val->document_starts(), nullptr);

  // The streaming writer: a split's first token starts a document marked or not, a mark with no
  // token after it (an empty document, or one at the end) is none, and a mask changes nothing.
  const std::vector<int32_t> tokens = spread_tokens(20, 256, 9);
  const std::vector<uint8_t> mask(20, 1);
  for (const bool masked : {false, true}) {
    SCOPED_TRACE(masked ? "masked" : "unmasked");
    const std::string file = path(masked ? "masked.h5" : "streamed.h5");
    {
      TokenFileWriter writer(file, 256, "bytes", {}, {}, masked, {}, /*documents=*/true);
      const uint8_t* m = masked ? mask.data() : nullptr;
      writer.append_train(tokens.data(), 3, m);  // [0, 3): unmarked, still a document
      writer.start_document_train();
      writer.append_train(tokens.data(), 0, m);  // nothing yet
      writer.append_train(tokens.data(), 2, m);  // starts at 3
      writer.append_train(tokens.data(), 4, m);  // same document
      writer.start_document_val();
      writer.start_document_val();             // twice: one document
      writer.append_val(tokens.data(), 5, m);  // starts at 0
      writer.start_document_train();
      writer.start_document_train();             // an empty document between: none
      writer.append_train(tokens.data(), 1, m);  // starts at 9
      writer.start_document_val();
      writer.append_val(tokens.data(), 1, m);  // starts at 5
      writer.start_document_train();           // nothing follows: none
      writer.finish();
    }
    const std::vector<int64_t> train_starts{0, 3, 9}, val_starts{0, 5};
    const TokenData streamed = read_token_file(file);
    EXPECT_TRUE(streamed.documents);
    EXPECT_EQ(streamed.train_doc_starts, train_starts);
    EXPECT_EQ(streamed.val_doc_starts, val_starts);
    EXPECT_TRUE(stored_as_int64(file, "/train_doc_starts"));
    const TokenFile on_disk = open_token_file(file);
    EXPECT_EQ(on_disk.train->masked(), masked);  // MaskedTokens forwards to its tokens
    ASSERT_NE(on_disk.train->document_starts(), nullptr);
    EXPECT_EQ(*on_disk.train->document_starts(), train_starts);
    EXPECT_EQ(*on_disk.val->document_starts(), val_starts);
  }
  {
    // documents with nothing appended: empty splits, empty datasets.
    TokenFileWriter writer(path("empty.h5"), 256, "bytes", {}, {}, false, {}, true);
    writer.start_document_val();
    writer.finish();
  }
  EXPECT_TRUE(read_token_file(path("empty.h5")).documents);
  EXPECT_TRUE(read_token_file(path("empty.h5")).val_doc_starts.empty());
  // A writer made without documents refuses a mark and writes none.
  TokenFileWriter plain(path("plain.h5"), 256, "bytes");
  expect_error([&] { plain.start_document_train(); },
               {"plain.h5", "a document start for a file written without them"});
  plain.append_train(tokens.data(), 5);
  plain.finish();
  EXPECT_EQ(open_token_file(path("plain.h5")).train->document_starts(), nullptr);

  // In memory: kept by pointer, checked like the file's.
  const std::vector<int32_t> five(5, 1);
  const std::vector<int64_t> starts{0, 2};
  const TokensInMemory in_memory(five, {}, &starts);
  EXPECT_EQ(in_memory.document_starts(), &starts);
  EXPECT_FALSE(in_memory.masked());
  EXPECT_EQ(TokensInMemory(five, {}, nullptr).document_starts(), nullptr);
  EXPECT_EQ(TokensInMemory(five).document_starts(), nullptr);
  const std::vector<int64_t> outside{0, 5};
  expect_error([&] { TokensInMemory(five, {}, &outside); },
               {"token window: document starts[1] = 5 is not inside the split's 5 tokens"});
}

// Adds a 1-D dataset `name` of `values` stored as `type` to an existing token file.
void add_starts(const std::string& file, const char* name, const std::vector<int64_t>& values,
                hid_t type = H5T_STD_I64LE) {
  hid_t h5 = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(h5, 0);
  const hsize_t length = values.size();
  hid_t space = H5Screate_simple(1, &length, nullptr);
  hid_t dataset = H5Dcreate2(h5, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  if (length > 0) {
    ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  }
  H5Dclose(dataset), H5Sclose(space), H5Fclose(h5);
}

// Every damaged pair is refused when read, by read_token_file and open_token_file alike, with one
// line naming the file and the dataset; any integer type is read.
TEST_F(TokenStreamTest, DamagedDocumentStartsAreRefusedNamingTheFile) {
  const std::vector<int32_t> train = spread_tokens(10, 256, 1), val = spread_tokens(330, 256, 2);
  struct Case {
    std::string name;
    std::vector<int64_t> train_starts, val_starts;
    bool train_present, val_present;
    std::string error;
  };
  const std::vector<int64_t> nine_then_400{0, 1, 2, 3, 4, 5, 6, 7, 8, 400};
  const std::vector<int64_t> twelve{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  const std::string outside = "/val_doc_starts[9] = 400 is not inside the split's 330 tokens";
  const std::string too_many = "/train_doc_starts[10] = 10 is not inside the split's 10 tokens";
  const std::vector<Case> cases{
      {"train_only", {0}, {}, true, false, "has /train_doc_starts but not /val_doc_starts"},
      {"val_only", {}, {0}, false, true, "has /val_doc_starts but not /train_doc_starts"},
      {"first", {5, 7}, {0}, true, true, "/train_doc_starts[0] is 5, not 0"},
      {"repeat", {0, 2, 7, 7}, {0}, true, true, "/train_doc_starts[3] = 7 is not after [2] = 7"},
      {"descending", {0, 4, 3}, {0}, true, true, "/train_doc_starts[2] = 3 is not after [1] = 4"},
      {"negative", {0, -1}, {0}, true, true, "/train_doc_starts[1] = -1 is not after [0] = 0"},
      {"outside", {0}, nine_then_400, true, true, outside},
      {"empty", {}, {0}, true, true, "/train_doc_starts is empty, but the split has 10 tokens"},
      {"too_many", twelve, {0}, true, true, too_many},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string file = path(c.name + ".h5");
    write_token_file(file, train, val, 256, "bytes");
    if (c.train_present) add_starts(file, "/train_doc_starts", c.train_starts);
    if (c.val_present) add_starts(file, "/val_doc_starts", c.val_starts);
    expect_error([&] { read_token_file(file); }, {file + ": " + c.error});
    expect_error([&] { open_token_file(file); }, {file + ": " + c.error});
  }
  // A split of no tokens has no documents.
  const std::string empty_split = path("empty_split.h5");
  write_token_file(empty_split, train, {}, 256, "bytes");
  add_starts(empty_split, "/train_doc_starts", {0});
  add_starts(empty_split, "/val_doc_starts", {0});
  expect_error([&] { open_token_file(empty_split); },
               {empty_split + ": /val_doc_starts[0] = 0 is not inside the split's 0 tokens"});

  // Not integers, or not 1-D.
  const std::string floats = path("floats.h5");
  write_token_file(floats, train, val, 256, "bytes");
  add_starts(floats, "/train_doc_starts", {0}, H5T_IEEE_F64LE);
  add_starts(floats, "/val_doc_starts", {0});
  expect_error([&] { read_token_file(floats); },
               {floats + ": dataset /train_doc_starts does not hold integers"});

  // Any integer type reads (h5py writes what the numpy array holds).
  const std::string narrow = path("narrow.h5");
  write_token_file(narrow, train, val, 256, "bytes");
  add_starts(narrow, "/train_doc_starts", {0, 4, 9}, H5T_STD_U16BE);
  add_starts(narrow, "/val_doc_starts", {0, 300}, H5T_STD_I32LE);
  EXPECT_EQ(read_token_file(narrow).train_doc_starts, (std::vector<int64_t>{0, 4, 9}));
  EXPECT_EQ(*open_token_file(narrow).val->document_starts(), (std::vector<int64_t>{0, 300}));

  // The writer refuses bad starts before writing anything.
  TokenData data;
  data.train = train;
  data.val = val;
  data.vocab_size = 256;
  data.tokenizer = "bytes";
  data.documents = true;
  data.train_doc_starts = {0, 10};
  data.val_doc_starts = {0};
  const std::string refused = path("refused.h5");
  expect_error([&] { write_token_file(refused, data); },
               {refused + ": /train_doc_starts[1] = 10 is not inside the split's 10 tokens"});
  EXPECT_FALSE(fs::exists(refused));
  EXPECT_FALSE(fs::exists(refused + ".tmp"));
}

// prepare-data's text formats: each input file starts a document (brown, text), each line a
// document (jsonl), the validation split's first token one too; the same starts whatever the
// piece size.
TEST_F(TokenStreamTest, PrepareRecordsDocumentStarts) {
  write_file("text/a.txt", "first file\n");        // 11 bytes: [0, 11)
  write_file("text/b.txt", "");                    // no text: no document
  write_file("text/c.txt", "second\n");            // [11, 18)
  write_file("text/d.txt", std::string(22, 'x'));  // [18, 40), cut by the split at 28
  write_file("text/e.txt", "last\n");              // [40, 45)
  // brown: ca02 has only blank lines, no text.
  write_file("brown/ca01", "The/at jury/nn said/vbd ./.\n");  // "The jury said .\n": 16 bytes
  write_file("brown/ca02", "\n\n");
  write_file("brown/ca03", "It/pps is/bez ./.\n");  // "It is .\n": 8 bytes, [16, 24)
  write_file("brown/ca04", "Yes/rb ./.\n");         // "Yes .\n": 6 bytes, [24, 30)
  write_file("docs.jsonl",
             "{\"text\": \"alpha\"}\n\n{\"text\": \"be\\nta\"}\n"
             "{\"text\": \"\"}\n{\"text\": \"gamma\"}\n{\"text\": \"delta\"}\n");
  struct Case {
    std::string format, input;
    double val_fraction;
    std::vector<int64_t> train_starts, val_starts;
  };
  const std::vector<Case> cases{
      // 45 bytes, floor(0.63 * 45) = 28 train: d.txt is cut after 10 of its bytes.
      {"text", path("text"), 0.37, {0, 11, 18}, {0, 12}},
      // 30 bytes, floor(0.8 * 30) = 24 train: the split falls on ca04's start.
      {"brown", path("brown"), 0.2, {0, 16}, {0}},
      // 5 documents, floor(0.6 * 5) = 3 train: "alpha\n", "be\nta\n", "\n"; "gamma\n", "delta\n".
      {"jsonl", path("docs.jsonl"), 0.4, {0, 6, 12}, {0, 6}},
  };
  for (const Case& c : cases) {
    for (const int64_t piece : {int64_t{1}, int64_t{7}, int64_t{4096}}) {
      SCOPED_TRACE(c.format + ", pieces of " + std::to_string(piece) + " bytes");
      PrepareOptions options;
      options.inputs = {c.input};
      options.format = c.format;
      options.output = path(c.format + ".h5");
      options.val_fraction = c.val_fraction;
      options.encode_piece_bytes = piece;
      prepare_data(options);
      const TokenData data = read_token_file(options.output);
      EXPECT_TRUE(data.documents);
      EXPECT_EQ(data.train_doc_starts, c.train_starts);
      EXPECT_EQ(data.val_doc_starts, c.val_starts);
    }
  }
}

}  // namespace
}  // namespace sy
