// A synthetic byte-level token file of any size for bench/large_tokens/run.sh, written in slices
// of 64 MiB so that the generator itself needs no more memory than that, in the layout that
// prepare-data writes (docs/data.md: contiguous uint8 /train and /val, vocab_size 256, tokenizer
// bytes). The text is words drawn from a fixed list by xorshift, so a model has something to learn
// and the file compresses about as badly as text does.
//
// Usage: sy_make_token_file OUTPUT TRAIN_TOKENS [VAL_TOKENS]   (VAL_TOKENS default 1048576)
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

void write_split(hid_t file, const char* name, uint64_t length, SyntheticText& text) {
  const hsize_t total = length;
  const hid_t space = H5Screate_simple(1, &total, nullptr);
  check(space >= 0, std::string("cannot create dataspace for ") + name);
  const hid_t dataset =
      H5Dcreate2(file, name, H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  check(dataset >= 0, std::string("cannot create ") + name);
  const hsize_t slice = hsize_t{64} << 20;
  std::vector<uint8_t> bytes;
  for (hsize_t start = 0; start < total; start += slice) {
    hsize_t count = std::min(slice, total - start);
    bytes.resize(count);
    text.fill(bytes);
    const hid_t memory = H5Screate_simple(1, &count, nullptr);
    check(memory >= 0 && H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &count,
                                             nullptr) >= 0 &&
              H5Dwrite(dataset, H5T_NATIVE_UINT8, memory, space, H5P_DEFAULT, bytes.data()) >= 0,
          std::string("cannot write ") + name);
    H5Sclose(memory);
  }
  check(H5Dclose(dataset) >= 0 && H5Sclose(space) >= 0, std::string("cannot finish ") + name);
}

void write_attributes(hid_t file) {
  const hid_t scalar = H5Screate(H5S_SCALAR);
  const int64_t vocab_size = 256;
  const hid_t vocab = H5Acreate2(file, "vocab_size", H5T_STD_I64LE, scalar, H5P_DEFAULT,
                                 H5P_DEFAULT);
  check(vocab >= 0 && H5Awrite(vocab, H5T_NATIVE_INT64, &vocab_size) >= 0, "cannot write vocab_size");
  H5Aclose(vocab);
  const hid_t string_type = H5Tcopy(H5T_C_S1);
  H5Tset_size(string_type, H5T_VARIABLE);
  H5Tset_cset(string_type, H5T_CSET_UTF8);
  const hid_t tokenizer = H5Acreate2(file, "tokenizer", string_type, scalar, H5P_DEFAULT,
                                     H5P_DEFAULT);
  const char* name = "bytes";
  check(tokenizer >= 0 && H5Awrite(tokenizer, string_type, &name) >= 0, "cannot write tokenizer");
  H5Aclose(tokenizer), H5Tclose(string_type), H5Sclose(scalar);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s OUTPUT TRAIN_TOKENS [VAL_TOKENS]\n", argv[0]);
    return 2;
  }
  const std::string output = argv[1];
  const uint64_t train = std::strtoull(argv[2], nullptr, 10);
  const uint64_t val = argc == 4 ? std::strtoull(argv[3], nullptr, 10) : uint64_t{1} << 20;
  try {
    check(train > 0, "TRAIN_TOKENS must be positive");
    const std::string temporary = output + ".tmp";
    const hid_t file = H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    check(file >= 0, temporary + ": cannot create");
    SyntheticText text;
    write_split(file, "/train", train, text);
    write_split(file, "/val", val, text);
    write_attributes(file);
    check(H5Fclose(file) >= 0, temporary + ": cannot finish");
    std::filesystem::rename(temporary, output);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\n", output.c_str(), error.what());
    return 1;
  }
  return 0;
}
