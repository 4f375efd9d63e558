// Tests of data/: token file, Brown preparation, step sampler, validation batches (SPEC 5).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the system temp directory per test, removed afterwards.
class DataTest : public test::TempFolderTest {
 protected:
  DataTest() : TempFolderTest("sy_test_data") {}
};

using test::expect_error;

// The HDF5 element type of a dataset, for checking what the writer chose.
bool dataset_type_equals(const std::string& file_path, const char* name, hid_t expected) {
  const hid_t file = H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t dataset = H5Dopen2(file, name, H5P_DEFAULT);
  const hid_t type = H5Dget_type(dataset);
  const bool equal = H5Tequal(type, expected) > 0;
  H5Tclose(type);
  H5Dclose(dataset);
  H5Fclose(file);
  return equal;
}

// A hand-made token file: int64 datasets as listed, optional attributes, fixed-length string.
void write_raw_token_file(const std::string& file_path, const std::vector<int64_t>* train,
                          const std::vector<int64_t>* val, int64_t vocab_size,
                          const char* tokenizer) {
  const hid_t file = H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  auto write = [&](const char* name, const std::vector<int64_t>& tokens) {
    const hsize_t length = tokens.size();
    const hid_t space = H5Screate_simple(1, &length, nullptr);
    const hid_t dataset =
        H5Dcreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data());
    H5Dclose(dataset);
    H5Sclose(space);
  };
  if (train) write("/train", *train);
  if (val) write("/val", *val);
  const hid_t scalar = H5Screate(H5S_SCALAR);
  const hid_t vocab_attr =
      H5Acreate2(file, "vocab_size", H5T_STD_I32LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(vocab_attr, H5T_NATIVE_INT64, &vocab_size);
  H5Aclose(vocab_attr);
  if (tokenizer) {
    const hid_t string_type = H5Tcopy(H5T_C_S1);
    H5Tset_size(string_type, 16);
    H5Tset_strpad(string_type, H5T_STR_NULLPAD);
    char padded[16] = {};
    std::snprintf(padded, sizeof padded, "%s", tokenizer);
    const hid_t attr =
        H5Acreate2(file, "tokenizer", string_type, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, string_type, padded);
    H5Aclose(attr);
    H5Tclose(string_type);
  }
  H5Sclose(scalar);
  H5Fclose(file);
}

// ---- token file ----

TEST_F(DataTest, RoundTripBytesUsesUint8) {
  const std::vector<int32_t> train = {0, 1, 255, 17, 42}, val = {255, 0};
  const std::string file = path("bytes.h5");
  write_token_file(file, train, val, 256, "bytes");
  EXPECT_FALSE(fs::exists(file + ".tmp"));
  EXPECT_TRUE(dataset_type_equals(file, "/train", H5T_STD_U8LE));
  const TokenData data = read_token_file(file);
  EXPECT_EQ(data.train, train);
  EXPECT_EQ(data.val, val);
  EXPECT_EQ(data.vocab_size, 256);
  EXPECT_EQ(data.tokenizer, "bytes");
}

TEST_F(DataTest, RoundTripVocab1000UsesUint16) {
  const std::vector<int32_t> train = {999, 0, 500, 256}, val = {998};
  const std::string file = path("v1000.h5");
  write_token_file(file, train, val, 1000, "bpe-1000");
  EXPECT_TRUE(dataset_type_equals(file, "/val", H5T_STD_U16LE));
  const TokenData data = read_token_file(file);
  EXPECT_EQ(data.train, train);
  EXPECT_EQ(data.val, val);
  EXPECT_EQ(data.vocab_size, 1000);
  EXPECT_EQ(data.tokenizer, "bpe-1000");
}

TEST_F(DataTest, RoundTripLargeVocabUsesInt32) {
  const std::vector<int32_t> train = {65536, 0, 70000}, val = {};
  const std::string file = path("big.h5");
  write_token_file(file, train, val, 70001, "big");
  EXPECT_TRUE(dataset_type_equals(file, "/train", H5T_STD_I32LE));
  const TokenData data = read_token_file(file);
  EXPECT_EQ(data.train, train);
  EXPECT_TRUE(data.val.empty());
  EXPECT_EQ(data.vocab_size, 70001);
}

TEST_F(DataTest, ReadsOtherIntegerTypesAndFixedStrings) {
  const std::vector<int64_t> train = {1, 2, 3}, val = {4};
  const std::string file = path("int64.h5");
  write_raw_token_file(file, &train, &val, 10, "bytes");
  const TokenData data = read_token_file(file);
  EXPECT_EQ(data.train, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(data.val, (std::vector<int32_t>{4}));
  EXPECT_EQ(data.tokenizer, "bytes");
}

TEST_F(DataTest, ReadErrorsNameTheFile) {
  const std::string missing = path("missing.h5");
  expect_error([&] { read_token_file(missing); }, {missing, "no such file"});

  const std::string not_hdf5 = path("text.h5");
  write_file("text.h5", "hello");
  expect_error([&] { read_token_file(not_hdf5); }, {not_hdf5, "not an HDF5 file"});

  const std::vector<int64_t> tokens = {1, 2, 3};
  const std::string no_val = path("no_val.h5");
  write_raw_token_file(no_val, &tokens, nullptr, 10, "bytes");
  expect_error([&] { read_token_file(no_val); }, {no_val, "no dataset /val"});

  const std::string no_tokenizer = path("no_tokenizer.h5");
  write_raw_token_file(no_tokenizer, &tokens, &tokens, 10, nullptr);
  expect_error([&] { read_token_file(no_tokenizer); }, {no_tokenizer, "no attribute tokenizer"});

  const std::vector<int64_t> bad = {1, 300, 2};
  const std::string too_big = path("too_big.h5");
  write_raw_token_file(too_big, &tokens, &bad, 256, "bytes");
  expect_error([&] { read_token_file(too_big); }, {too_big, "token 300 at /val[1]"});

  const std::vector<int64_t> negative = {-1};
  const std::string below_zero = path("negative.h5");
  write_raw_token_file(below_zero, &negative, &tokens, 256, "bytes");
  expect_error([&] { read_token_file(below_zero); }, {below_zero, "token -1 at /train[0]"});
}

TEST_F(DataTest, WriteRejectsOutOfRangeTokens) {
  const std::string file = path("bad.h5");
  expect_error([&] { write_token_file(file, {1, 256}, {}, 256, "bytes"); },
               {file, "token 256 at train[1]"});
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(fs::exists(file + ".tmp"));
  // Missing folders are created; a folder that cannot be (a file is in the way) is an error.
  const std::string in_new_folder = path("new/folder/x.h5");
  write_token_file(in_new_folder, {1}, {2}, 256, "bytes");
  EXPECT_TRUE(fs::exists(in_new_folder));
  { std::ofstream(path("plain_file")) << "x"; }
  const std::string under_a_file = path("plain_file/x.h5");
  expect_error([&] { write_token_file(under_a_file, {1}, {}, 256, "bytes"); },
               {under_a_file, "cannot create"});
}

// ---- preparation ----

TEST(BrownText, WordsQuotesAndSlashes) {
  const std::string raw =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at 1/2/cd and/or/cc //in evidence/nn ''/'' ./.\n"
      "\n"
      "Second/ap line/nn-hl \n"
      "   \t \n"
      "\tLast/ap ,/, one/cd ;/.";
  EXPECT_EQ(brown_file_to_text(raw),
            "The jury said \" no 1/2 and/or / evidence \" .\n"
            "Second line\n"
            "Last , one ;\n");
  EXPECT_EQ(brown_file_to_text(""), "");
  EXPECT_EQ(brown_file_to_text("\n\t\n"), "");
}

TEST(Tokenizer, BytesRoundTrip) {
  const auto tokenizer = make_tokenizer("bytes");
  EXPECT_EQ(tokenizer->name(), "bytes");
  EXPECT_EQ(tokenizer->vocab_size(), 256);
  const std::string text = "a\n\xff\x01";
  const std::vector<int32_t> tokens = tokenizer->encode(text);
  EXPECT_EQ(tokens, (std::vector<int32_t>{'a', '\n', 255, 1}));
  EXPECT_EQ(tokenizer->decode(tokens), text);
  EXPECT_THROW(tokenizer->decode({256}), std::runtime_error);
  expect_error([] { make_tokenizer("gpt2"); }, {"unknown tokenizer 'gpt2'"});
}

TEST_F(DataTest, PrepareBrownFolder) {
  fs::create_directories(folder_ / "brown");
  // Written in reverse name order: the result must still follow name order.
  write_file("brown/cb01", "\n\n\tSecond/ap file/nn ./.\n\n");
  write_file("brown/ca01", "\n\n\tThe/at ``/`` first/od ''/'' file/nn ./.\n\n\tMore/ap ./.\n");
  write_file("brown/README", "not/xx corpus/yy\n");
  write_file("brown/CONTENTS", "nor/xx this/yy\n");
  const std::string output = path("brown.h5");
  const PrepareStats stats = prepare_data(path("brown"), "brown", output);

  const std::string text = "The \" first \" file .\nMore .\nSecond file .\n";
  const int64_t n = static_cast<int64_t>(text.size());
  const int64_t train_bytes = static_cast<int64_t>(std::floor(0.95 * n));
  EXPECT_EQ(stats.files, 2);
  EXPECT_EQ(stats.bytes, n);
  EXPECT_EQ(stats.train_tokens, train_bytes);
  EXPECT_EQ(stats.val_tokens, n - train_bytes);

  const TokenData data = read_token_file(output);
  const auto tokenizer = make_tokenizer("bytes");
  EXPECT_EQ(tokenizer->decode(data.train), text.substr(0, train_bytes));
  EXPECT_EQ(tokenizer->decode(data.val), text.substr(train_bytes));
  EXPECT_EQ(data.vocab_size, 256);
  EXPECT_EQ(data.tokenizer, "bytes");
}

TEST_F(DataTest, PrepareTextFileSplitsBytes) {
  std::string text;
  for (int k = 0; k < 1234; k++) text += static_cast<char>('a' + k % 26);
  write_file("corpus.txt", text);
  const std::string output = path("text.h5");
  const PrepareStats stats = prepare_data(path("corpus.txt"), "text", output);
  EXPECT_EQ(stats.files, 1);
  EXPECT_EQ(stats.bytes, 1234);
  EXPECT_EQ(stats.train_tokens, 1172);  // floor(0.95 * 1234) = floor(1172.3)
  EXPECT_EQ(stats.val_tokens, 62);
  const TokenData data = read_token_file(output);
  const auto tokenizer = make_tokenizer("bytes");
  EXPECT_EQ(tokenizer->decode(data.train) + tokenizer->decode(data.val), text);

  // A folder of text files is concatenated as-is, in name order.
  fs::create_directories(folder_ / "texts");
  write_file("texts/b.txt", "world\n");
  write_file("texts/a.txt", "hello ");
  const PrepareStats folder_stats = prepare_data(path("texts"), "text", output, "bytes", 0.5);
  EXPECT_EQ(folder_stats.files, 2);
  const TokenData folder_data = read_token_file(output);
  EXPECT_EQ(tokenizer->decode(folder_data.train), "hello ");
  EXPECT_EQ(tokenizer->decode(folder_data.val), "world\n");
}

TEST_F(DataTest, PrepareErrors) {
  expect_error([&] { prepare_data(path("nothing"), "text", path("o.h5")); },
               {path("nothing"), "no such file or folder"});
  fs::create_directories(folder_ / "empty");
  write_file("empty/README", "x");
  expect_error([&] { prepare_data(path("empty"), "brown", path("o.h5")); },
               {path("empty"), "no Brown corpus files"});
  expect_error([&] { prepare_data(path("empty"), "csv", path("o.h5")); },
               {"unknown data format 'csv'"});
}

// ---- sampler ----

std::vector<int32_t> counting_tokens(int64_t n) {
  std::vector<int32_t> tokens(n);
  for (int64_t k = 0; k < n; k++) tokens[k] = static_cast<int32_t>(k);
  return tokens;
}

TEST(Sampler, PureFunctionOfSeedStepSequence) {
  const std::vector<int32_t> tokens = counting_tokens(1000);
  const int64_t seq_len = 16;
  const StepSampler first(tokens, seq_len, 1234), second(tokens, seq_len, 1234);
  const StepSampler other_seed(tokens, seq_len, 1235);
  std::set<int64_t> seen;
  int64_t same_across_steps = 0, same_across_seeds = 0;
  for (int64_t step = 0; step < 50; step++) {
    for (int64_t i = 0; i < 8; i++) {
      const int64_t offset = first.offset(step, i);
      EXPECT_EQ(offset, second.offset(step, i));
      EXPECT_GE(offset, 0);
      EXPECT_LE(offset, 1000 - seq_len - 1);
      seen.insert(offset);
      if (offset == first.offset(step + 1, i)) same_across_steps++;
      if (offset == other_seed.offset(step, i)) same_across_seeds++;
    }
  }
  // 400 draws over 984 values: well spread, and steps and seeds give different streams.
  EXPECT_GT(seen.size(), 250u);
  EXPECT_LT(same_across_steps, 5);
  EXPECT_LT(same_across_seeds, 5);
  // Order of calls does not matter: asking again later gives the same value.
  EXPECT_EQ(first.offset(3, 2), second.offset(3, 2));
}

TEST(Sampler, OffsetsCoverTheWholeRange) {
  // N = S + 2: offsets 0 and 1 are the only valid ones; both must occur.
  const std::vector<int32_t> tokens = counting_tokens(10);
  const StepSampler sampler(tokens, 8, 7);
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 64; step++) seen.insert(sampler.offset(step, 0));
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1}));
  // N = S + 1: a single valid offset.
  const std::vector<int32_t> exact = counting_tokens(9);
  EXPECT_EQ(StepSampler(exact, 8, 7).offset(5, 3), 0);
}

TEST(Sampler, GroupsAreSlicesOfTheStepBatch) {
  const std::vector<int32_t> tokens = counting_tokens(5000);
  const int64_t seq_len = 12, batch_size = 3, step = 17;
  const StepSampler sampler(tokens, seq_len, 99);
  for (int64_t g = 0; g < 4; g++) {
    std::vector<int32_t> inputs(batch_size * seq_len), targets(batch_size * seq_len);
    sampler.group(step, g, batch_size, inputs.data(), targets.data());
    for (int64_t b = 0; b < batch_size; b++) {
      const int64_t offset = sampler.offset(step, g * batch_size + b);
      for (int64_t t = 0; t < seq_len; t++) {
        EXPECT_EQ(inputs[b * seq_len + t], offset + t);
        EXPECT_EQ(targets[b * seq_len + t], offset + t + 1);
      }
    }
  }
  // Group 1 with B = 3 equals sequences 3..5, whichever way the batch is cut: with B = 1 those
  // are groups 3, 4, 5.
  std::vector<int32_t> group_inputs(3 * seq_len), group_targets(3 * seq_len);
  sampler.group(step, 1, 3, group_inputs.data(), group_targets.data());
  for (int64_t b = 0; b < 3; b++) {
    std::vector<int32_t> one_inputs(seq_len), one_targets(seq_len);
    sampler.group(step, 3 + b, 1, one_inputs.data(), one_targets.data());
    EXPECT_TRUE(std::equal(one_inputs.begin(), one_inputs.end(),
                           group_inputs.begin() + b * seq_len));
    EXPECT_TRUE(std::equal(one_targets.begin(), one_targets.end(),
                           group_targets.begin() + b * seq_len));
  }
}

TEST(Sampler, RejectsTooFewTokens) {
  const std::vector<int32_t> tokens = counting_tokens(8);
  expect_error([&] { StepSampler(tokens, 8, 1); }, {"training split has 8 tokens", "need 9"});
}

// A mixture: each sequence comes from one source, drawn per (step, sequence) in the weights'
// proportions; the window inside that source is the single-source draw; a one-source mixture is
// the plain sampler; the draws do not depend on how the batch is cut into groups.
TEST(Sampler, MixtureDrawsSourcesInTheirProportions) {
  const int64_t seq_len = 8;
  std::vector<int32_t> a = counting_tokens(400), b = counting_tokens(300), c = counting_tokens(200);
  for (int32_t& t : b) t += 10000;  // the source of a window shows in its tokens
  for (int32_t& t : c) t += 20000;
  auto source = [](const std::vector<int32_t>& tokens) {
    return std::shared_ptr<const TokenSource>(std::make_shared<TokensInMemory>(tokens));
  };
  const StepSampler mix({source(a), source(b), source(c)}, {0.5, 0.0, 1.5}, {"a", "b", "c"},
                        seq_len, 42);
  const StepSampler plain_a(a, seq_len, 42), plain_c(c, seq_len, 42);
  int64_t from[3] = {0, 0, 0};
  std::vector<int32_t> inputs(4 * seq_len), targets(4 * seq_len);
  for (int64_t step = 0; step < 500; ++step) {
    mix.group(step, 0, 4, inputs.data(), targets.data());
    for (int64_t i = 0; i < 4; ++i) {
      const int64_t j = mix.source(step, i);
      ++from[j];
      EXPECT_EQ(inputs[i * seq_len] / 10000, j);  // the window came from source j
      const int64_t offset = (j == 0 ? plain_a : plain_c).offset(step, i);
      EXPECT_EQ(mix.offset(step, i), offset);  // the single-source draw, inside source j
      EXPECT_EQ(inputs[i * seq_len] % 10000, offset);
    }
  }
  EXPECT_EQ(from[1], 0);                      // weight 0: never drawn
  EXPECT_NEAR(from[0] / 2000.0, 0.25, 0.03);  // 500 steps x 4 sequences, 1/4 and 3/4
  EXPECT_NEAR(from[2] / 2000.0, 0.75, 0.03);
  // Group 1 of B = 2 is groups 2 and 3 of B = 1.
  std::vector<int32_t> two(2 * seq_len), t2(2 * seq_len), one(seq_len), t1(seq_len);
  mix.group(7, 1, 2, two.data(), t2.data());
  mix.group(7, 3, 1, one.data(), t1.data());
  EXPECT_TRUE(std::equal(one.begin(), one.end(), two.begin() + seq_len));
  // One source is the plain sampler, batch for batch.
  const StepSampler single({source(a)}, {3.0}, {"a"}, seq_len, 42);
  for (int64_t step = 0; step < 20; ++step)
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(single.offset(step, i), plain_a.offset(step, i));
}

TEST(Sampler, MixtureRejectsBadSourcesAndWeights) {
  const std::vector<int32_t> long_tokens = counting_tokens(100), short_tokens = counting_tokens(8);
  auto source = [&](int64_t n) {  // TokensInMemory keeps a pointer to the vector
    return std::shared_ptr<const TokenSource>(
        std::make_shared<TokensInMemory>(n == 8 ? short_tokens : long_tokens));
  };
  expect_error(
      [&] {
        StepSampler({source(100), source(8)}, {1, 1}, {"a.h5", "b.h5"}, 8, 1);
      },
      {"b.h5 has 8 tokens", "need 9"});
  expect_error(
      [&] {
        StepSampler({source(100), source(100)}, {1, -1}, {"a.h5", "b.h5"}, 8, 1);
      },
      {"b.h5: weight", "must be finite and >= 0"});
  expect_error(
      [&] {
        StepSampler({source(100), source(100)}, {0, 0}, {"a.h5", "b.h5"}, 8, 1);
      },
      {"the weights sum to 0"});
  expect_error(
      [&] {
        StepSampler({source(100), source(100)}, {1}, {"a.h5", "b.h5"}, 8, 1);
      },
      {"2 sources but 1 weights"});
}

// ---- validation ----

TEST(Validation, BatchOffsetsAndErrors) {
  const std::vector<int32_t> tokens = counting_tokens(100);
  const int64_t batch_size = 2, seq_len = 8;
  EXPECT_EQ(max_validation_batches(100, batch_size, seq_len), 6);  // 6*16 + 1 = 97 <= 100
  EXPECT_EQ(max_validation_batches(97, batch_size, seq_len), 6);
  EXPECT_EQ(max_validation_batches(96, batch_size, seq_len), 5);
  EXPECT_EQ(max_validation_batches(0, batch_size, seq_len), 0);
  std::vector<int32_t> inputs(batch_size * seq_len), targets(batch_size * seq_len);
  for (int64_t j = 0; j < 6; j++) {
    validation_batch(tokens, j, batch_size, seq_len, inputs.data(), targets.data());
    for (int64_t i = 0; i < batch_size; i++) {
      for (int64_t t = 0; t < seq_len; t++) {
        EXPECT_EQ(inputs[i * seq_len + t], (j * batch_size + i) * seq_len + t);
        EXPECT_EQ(targets[i * seq_len + t], (j * batch_size + i) * seq_len + t + 1);
      }
    }
  }
  expect_error(
      [&] { validation_batch(tokens, 6, batch_size, seq_len, inputs.data(), targets.data()); },
      {"validation split has 100 tokens; 7 batches of 2 x 8 need 113"});
}

}  // namespace
}  // namespace sy
