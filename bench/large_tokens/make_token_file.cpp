// A synthetic token file of any size for bench/large_tokens/run.sh and bench/scaling/run.sh,
// written in slices of 64 MiB so that the generator itself needs no more memory than that, in
// the layout that prepare-data writes (docs/data.md: contiguous /train and /val, the vocab_size
// and tokenizer attributes). Two kinds:
// - text (the default): byte-level (uint8, vocab_size 256, tokenizer bytes), words drawn from a
//   fixed list by xorshift, so a model has something to learn and the file compresses about as
//   badly as text does;
// - --uniform VOCAB: tokens drawn uniformly from [0, VOCAB) (uint16, VOCAB <= 65536, tokenizer
//   "uniform"): nothing to learn, so an MoE router stays near its initial balance, as in
//   bench/gpu_step's synthetic batches (on the text, routers skew within ten steps).
//
// Usage: sy_make_token_file OUTPUT TRAIN_TOKENS [VAL_TOKENS] [--uniform VOCAB]
//        (VAL_TOKENS default 1048576)
// It writes directly, not through TokenFileWriter's spill: for a file of 10 GB that halves the
// disk traffic, which on a slow disk is the whole cost.
#include <hdf5.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/hdf5_io.h"

namespace {

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

class SyntheticText {
 public:
  // Fills `out` with the next bytes of the text.
  void fill(std::vector<uint8_t>& out) {
    for (uint8_t& byte : out) {
      if (position_ == word_.size()) next_word();
      byte = static_cast<uint8_t>(word_[position_++]);
    }
  }

 private:
  void next_word() {
    static const char* const kWords[] = {
        "the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with",
        "as", "his", "on", "be", "at", "by", "had", "not", "are", "but", "from", "or", "have",
        "an", "they", "which", "one", "you", "were", "her", "all", "she", "there", "would",
        "their", "we", "him", "been", "has", "when", "who", "will", "more", "no", "if", "out",
        "so", "said", "what", "up", "its", "about", "into", "than", "them", "can", "only",
        "other", "new", "some", "could"};
    state_ ^= state_ << 13, state_ ^= state_ >> 7, state_ ^= state_ << 17;
    word_ = kWords[state_ % 64];
    word_ += (++words_ % 13 == 0) ? ".\n" : " ";
    position_ = 0;
  }
  uint64_t state_ = 0x9e3779b97f4a7c15ull;
  uint64_t words_ = 0;
  std::string word_;
  size_t position_ = 0;
};

// Uniform tokens in [0, vocab_size), from xorshift.
class UniformTokens {
 public:
  explicit UniformTokens(uint64_t vocab_size) : vocab_size_(vocab_size) {}
  void fill(std::vector<uint16_t>& out) {
    for (uint16_t& token : out) {
      state_ ^= state_ << 13, state_ ^= state_ >> 7, state_ ^= state_ << 17;
      token = static_cast<uint16_t>(state_ % vocab_size_);
    }
  }

 private:
  uint64_t vocab_size_;
  uint64_t state_ = 0x2545f4914f6cdd1dull;
};

// Element types of the two kinds: uint8 text, uint16 uniform tokens.
template <class T>
hid_t file_type();
template <>
hid_t file_type<uint8_t>() {
  return H5T_STD_U8LE;
}
template <>
hid_t file_type<uint16_t>() {
  return H5T_STD_U16LE;
}
template <class T>
hid_t memory_type();
template <>
hid_t memory_type<uint8_t>() {
  return H5T_NATIVE_UINT8;
}
template <>
hid_t memory_type<uint16_t>() {
  return H5T_NATIVE_UINT16;
}

template <class T, class Source>
void write_split(hid_t file, const char* name, uint64_t length, Source& source) {
  const hsize_t total = length;
  const hid_t space = H5Screate_simple(1, &total, nullptr);
  check(space >= 0, std::string("cannot create dataspace for ") + name);
  const hid_t dataset =
      H5Dcreate2(file, name, file_type<T>(), space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  check(dataset >= 0, std::string("cannot create ") + name);
  const hsize_t slice = (hsize_t{64} << 20) / sizeof(T);
  std::vector<T> tokens;
  for (hsize_t start = 0; start < total; start += slice) {
    hsize_t count = std::min(slice, total - start);
    tokens.resize(count);
    source.fill(tokens);
    const hid_t memory = H5Screate_simple(1, &count, nullptr);
    check(memory >= 0 &&
              H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &count, nullptr) >= 0 &&
              H5Dwrite(dataset, memory_type<T>(), memory, space, H5P_DEFAULT, tokens.data()) >= 0,
          std::string("cannot write ") + name);
    H5Sclose(memory);
  }
  check(H5Dclose(dataset) >= 0 && H5Sclose(space) >= 0, std::string("cannot finish ") + name);
}

void write_attributes(hid_t file, int64_t vocab_size, const char* name) {
  const hid_t scalar = H5Screate(H5S_SCALAR);
  const hid_t vocab = H5Acreate2(file, "vocab_size", H5T_STD_I64LE, scalar, H5P_DEFAULT,
                                 H5P_DEFAULT);
  check(vocab >= 0 && H5Awrite(vocab, H5T_NATIVE_INT64, &vocab_size) >= 0, "cannot write vocab_size");
  H5Aclose(vocab);
  const hid_t string_type = H5Tcopy(H5T_C_S1);
  H5Tset_size(string_type, H5T_VARIABLE);
  H5Tset_cset(string_type, H5T_CSET_UTF8);
  const hid_t tokenizer =
      H5Acreate2(file, "tokenizer", string_type, scalar, H5P_DEFAULT, H5P_DEFAULT);
  check(tokenizer >= 0 && H5Awrite(tokenizer, string_type, &name) >= 0, "cannot write tokenizer");
  H5Aclose(tokenizer), H5Tclose(string_type), H5Sclose(scalar);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool uniform = false;
  uint64_t uniform_vocab = 0;
  if (args.size() >= 2 && args[args.size() - 2] == "--uniform") {
    uniform = true;
    uniform_vocab = std::strtoull(args.back().c_str(), nullptr, 10);
    args.resize(args.size() - 2);
  }
  if (args.size() < 2 || args.size() > 3) {
    std::fprintf(stderr, "usage: %s OUTPUT TRAIN_TOKENS [VAL_TOKENS] [--uniform VOCAB]\n", argv[0]);
    return 2;
  }
  const std::string output = args[0];
  const uint64_t train = std::strtoull(args[1].c_str(), nullptr, 10);
  const uint64_t val =
      args.size() == 3 ? std::strtoull(args[2].c_str(), nullptr, 10) : uint64_t{1} << 20;
  try {
    check(train > 0, "TRAIN_TOKENS must be positive");
    check(!uniform || (uniform_vocab >= 1 && uniform_vocab <= 65536),
          "--uniform: VOCAB must be in [1, 65536]");
    const std::string temporary = output + ".tmp";
    // The format prepare-data writes: checksummed headers (docs/data.md).
    const sy::h5::Handle access = sy::h5::checksummed_metadata_access();
    const hid_t file = H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get());
    check(file >= 0, temporary + ": cannot create");
    if (!uniform) {
      SyntheticText text;
      write_split<uint8_t>(file, "/train", train, text);
      write_split<uint8_t>(file, "/val", val, text);
      write_attributes(file, 256, "bytes");
    } else {
      UniformTokens tokens(uniform_vocab);
      write_split<uint16_t>(file, "/train", train, tokens);
      write_split<uint16_t>(file, "/val", val, tokens);
      write_attributes(file, static_cast<int64_t>(uniform_vocab), "uniform");
    }
    check(H5Fclose(file) >= 0, temporary + ": cannot finish");
    std::filesystem::rename(temporary, output);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\n", output.c_str(), error.what());
    return 1;
  }
  return 0;
}
