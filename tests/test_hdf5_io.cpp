// Tests of data/hdf5_io: the attribute-message check that keeps HDF5 1.10's decoder inside a
// damaged message (h5::check_attribute_messages, run by every has_attribute).
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "data/hdf5_io.h"
#include "data/token_file.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

using test::expect_error;

class Hdf5IoTest : public test::TempFolderTest {
 protected:
  Hdf5IoTest() : TempFolderTest("sy_test_hdf5_io") {}

  // A file whose root group holds `vocab_size` (int), `tokenizer` (variable-length string) and
  // `extra` more int attributes (enough of them push messages into continuation chunks).
  // latest: HDF5's newest format (version 2, checksummed object headers).
  std::string write_attributes(const std::string& name, int extra, bool latest = false) const {
    const std::string file_path = path(name);
    h5::Handle access = h5::own(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "plist");
    if (latest) H5Pset_libver_bounds(access.get(), H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    h5::Handle file = h5::own(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()),
                              H5Fclose, "create");
    h5::write_int_attribute(file.get(), "vocab_size", 256);
    h5::write_string_attribute(file.get(), "tokenizer", "bytes");
    for (int k = 0; k < extra; ++k)
      h5::write_int_attribute(file.get(), ("extra_" + std::to_string(k)).c_str(), k);
    return file_path;
  }

  static std::vector<uint8_t> read_bytes(const std::string& file_path) {
    std::ifstream in(file_path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  static void write_bytes(const std::string& file_path, const std::vector<uint8_t>& bytes) {
    std::ofstream(file_path, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }

  // Where the body of version-1 attribute message `name` starts: its name follows 8 bytes of
  // version, reserved, name/datatype/dataspace sizes.
  static size_t attribute_body(const std::vector<uint8_t>& bytes, const std::string& name) {
    const std::string key = name + '\0';
    const auto found = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
    EXPECT_NE(found, bytes.end()) << name;
    const size_t body = static_cast<size_t>(found - bytes.begin()) - 8;
    EXPECT_EQ(bytes[body], 1) << "a version 1 attribute message";
    return body;
  }

  // Opens the file and asks HDF5 (through has_attribute) whether `name` exists.
  static bool has(const std::string& file_path, const char* name) {
    h5::QuietErrors quiet;
    h5::Handle file = h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose,
                              "cannot open " + file_path);
    return h5::has_attribute(file.get(), name);
  }
};

TEST_F(Hdf5IoTest, IntactFilesPassInEveryHeaderLayout) {
  for (const int extra : {0, 40}) {
    for (const bool latest : {false, true}) {
      const std::string file_path =
          write_attributes("intact_" + std::to_string(extra) + (latest ? "_v2" : "_v1") + ".h5", extra, latest);
      EXPECT_TRUE(has(file_path, "tokenizer"));
      EXPECT_FALSE(has(file_path, "absent"));
      if (extra > 0) {
        EXPECT_TRUE(has(file_path, ("extra_" + std::to_string(extra - 1)).c_str()));
      }
    }
  }
}

// Each damage that made HDF5 1.10.8 read past the message (the fuzzer's inputs damaged these
// same fields) is refused before HDF5 decodes the message, naming its byte.
TEST_F(Hdf5IoTest, DamagedAttributeMessagesAreRefusedBeforeHdf5DecodesThem) {
  struct Damage {
    const char* what;
    size_t field;        // offset in the message body
    uint16_t value;      // little-endian u16 written there
    const char* expect;  // in the message
  };
  const Damage damages[] = {
      {"dataspace size", 6, 0xE008, "its name, datatype and dataspace claim"},
      {"datatype size", 4, 0xFFF4, "its name, datatype and dataspace claim"},
      {"name size", 2, 0xD80A, "its name, datatype and dataspace claim"},
      {"name size inside the message", 2, 4, "its name is not 3 characters and a NUL"},
  };
  for (const Damage& damage : damages) {
    SCOPED_TRACE(damage.what);
    const std::string file_path = write_attributes(std::string("damaged_") + damage.what + ".h5", 3);
    std::vector<uint8_t> bytes = read_bytes(file_path);
    const size_t body = attribute_body(bytes, "tokenizer");
    bytes[body + damage.field] = static_cast<uint8_t>(damage.value & 0xFF);
    bytes[body + damage.field + 1] = static_cast<uint8_t>(damage.value >> 8);
    write_bytes(file_path, bytes);
    // Any attribute query of that object is refused: HDF5 would decode every message to find one.
    expect_error([&] { has(file_path, "vocab_size"); },
                 {"damaged attribute message at byte " + std::to_string(body - 8), damage.expect});
  }
}

// Attributes of every datatype class that carries names or nests (h5py writes a bool as an enum
// of FALSE and TRUE) pass the datatype walk, and a token file carrying them still reads.
TEST_F(Hdf5IoTest, AttributesOfNamedAndNestedDatatypesPass) {
  for (const bool latest : {false, true}) {
    const std::string file_path =
        write_attributes(std::string("datatypes") + (latest ? "_v2" : "_v1") + ".h5", 0, latest);
    {
      h5::Handle file =
          h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose, "open");
      h5::Handle space = h5::own(H5Screate(H5S_SCALAR), H5Sclose, "space");
      const auto add = [&](const char* name, hid_t type, const void* value) {
        h5::Handle attribute =
            h5::own(H5Acreate2(file.get(), name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                    H5Aclose, name);
        ASSERT_GE(H5Awrite(attribute.get(), type, value), 0) << name;
      };
      h5::Handle boolean = h5::own(H5Tenum_create(H5T_NATIVE_INT8), H5Tclose, "enum");
      const int8_t no = 0, yes = 1;
      H5Tenum_insert(boolean.get(), "FALSE", &no);
      H5Tenum_insert(boolean.get(), "TRUE", &yes);
      add("flag", boolean.get(), &yes);
      struct Pair {
        int32_t step;
        double loss;
      } pair{3, 0.5};
      h5::Handle compound = h5::own(H5Tcreate(H5T_COMPOUND, sizeof(Pair)), H5Tclose, "compound");
      H5Tinsert(compound.get(), "step", HOFFSET(Pair, step), H5T_NATIVE_INT32);
      H5Tinsert(compound.get(), "loss", HOFFSET(Pair, loss), H5T_NATIVE_DOUBLE);
      add("pair", compound.get(), &pair);
      h5::Handle opaque = h5::own(H5Tcreate(H5T_OPAQUE, 4), H5Tclose, "opaque");
      H5Tset_tag(opaque.get(), "raw bytes");
      add("blob", opaque.get(), "abcd");
      const hsize_t three = 3;
      h5::Handle array = h5::own(H5Tarray_create2(H5T_NATIVE_FLOAT, 1, &three), H5Tclose, "array");
      const float values[3] = {1, 2, 3};
      add("triple", array.get(), values);
    }
    EXPECT_TRUE(has(file_path, "flag"));
    EXPECT_TRUE(has(file_path, "triple"));
    EXPECT_FALSE(has(file_path, "absent"));
  }
}

// The fuzzer's input turned the vlen string `tokenizer` into an enum (class 9 -> 8) whose member
// "names" had no NUL before the header's end: HDF5 strdup()ed past it.
TEST_F(Hdf5IoTest, AnEnumWhoseNamesRunOffTheMessageIsRefused) {
  const std::string file_path = write_attributes("enum_damage.h5", 3);
  std::vector<uint8_t> bytes = read_bytes(file_path);
  const size_t body = attribute_body(bytes, "tokenizer");
  const size_t type_at = body + 8 + 16;  // "tokenizer\0" padded to 16 (version 1)
  ASSERT_EQ(bytes[type_at] & 0x0f, 9) << "a variable-length string";
  bytes[type_at] = static_cast<uint8_t>((bytes[type_at] & 0xf0) | 8);
  bytes[type_at + 1] = 0xff;  // 255 members
  write_bytes(file_path, bytes);
  expect_error([&] { has(file_path, "vocab_size"); },
               {"damaged attribute message at byte " + std::to_string(body - 8)});
}

TEST_F(Hdf5IoTest, AValueLargerThanItsMessageIsRefused) {
  const std::string file_path = write_attributes("value.h5", 0);
  std::vector<uint8_t> bytes = read_bytes(file_path);
  // vocab_size: one 8-byte integer. Its datatype's element size (u32 at +4 of the datatype) made
  // 1000: the value would then be 1000 bytes where the message holds 8.
  const size_t body = attribute_body(bytes, "vocab_size");
  const size_t name_size = bytes[body + 2] | (bytes[body + 3] << 8);
  const size_t type_at = body + 8 + ((name_size + 7) & ~size_t{7});
  ASSERT_EQ(bytes[type_at + 4], 8) << "an 8-byte integer";
  bytes[type_at + 4] = 1000 & 0xFF;
  bytes[type_at + 5] = 1000 >> 8;
  write_bytes(file_path, bytes);
  expect_error([&] { has(file_path, "tokenizer"); }, {"its value claims more than the 8 bytes left"});
}

// A heap ID whose object index is not in its collection: HDF5 1.10 reads obj[index] unchecked
// (SIGSEGV in H5HG_read, found by fuzz_token_file); refused before the read.
TEST_F(Hdf5IoTest, AHeapIdNamingAMissingObjectIsRefused) {
  const std::string file_path = write_attributes("heap_id.h5", 0);
  std::vector<uint8_t> bytes = read_bytes(file_path);
  // tokenizer's value (version 1 message: name, datatype, dataspace padded to 8): sequence
  // length (u32), collection address (u64), object index (u32).
  const size_t body = attribute_body(bytes, "tokenizer");
  const auto field = [&](size_t at) { return static_cast<size_t>(bytes[at] | (bytes[at + 1] << 8)); };
  const auto pad = [](size_t n) { return (n + 7) & ~size_t{7}; };
  const size_t value_at = body + 8 + pad(field(body + 2)) + pad(field(body + 4)) + pad(field(body + 6));
  const size_t index_at = value_at + 4 + 8;
  ASSERT_EQ(bytes[index_at], 1) << "the string is the collection's first object";
  bytes[index_at] = 7;
  write_bytes(file_path, bytes);
  h5::QuietErrors quiet;
  h5::Handle file = h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, "open");
  expect_error([&] { h5::read_string_attribute(file.get(), "tokenizer"); },
               {"attribute tokenizer: a heap ID names object 7", "does not hold"});
}

// A continuation message that declares size 0: HDF5 1.10 decodes its address and length all the
// same and follows it (found by fuzz_token_file: behind one, HDF5 looped for ever in a damaged
// global heap that the checks had not seen). The checks follow it too.
TEST_F(Hdf5IoTest, ASizeZeroContinuationIsFollowedAsHdf5FollowsIt) {
  const std::string file_path = path("size_zero_continuation.h5");
  {
    h5::Handle file = h5::own(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                              H5Fclose, "create");
    // Enough attributes first that tokenizer's message lands in a continuation chunk.
    for (int k = 0; k < 40; ++k)
      h5::write_int_attribute(file.get(), ("extra_" + std::to_string(k)).c_str(), k);
    h5::write_string_attribute(file.get(), "tokenizer", "bytes");
  }
  std::vector<uint8_t> bytes = read_bytes(file_path);
  const auto u16_at = [&](size_t at) {
    return static_cast<size_t>(bytes[at] | (bytes[at + 1] << 8));
  };
  const auto u64_at = [&](size_t at) {
    uint64_t value = 0;
    for (int k = 7; k >= 0; --k) value = (value << 8) | bytes[at + k];
    return static_cast<size_t>(value);
  };
  // The root group's object header (a version 0 superblock holds its address at byte 64), version
  // 1: 16 bytes of prefix (the first chunk's size at +8), then messages of type (u16), size
  // (u16), flags and 3 reserved bytes.
  const size_t header = u64_at(64);
  ASSERT_EQ(bytes[header], 1) << "a version 1 object header";
  const size_t chunk_end = header + 16 + (u64_at(header + 8) & 0xFFFFFFFF);
  size_t continuation = 0;
  for (size_t at = header + 16; at + 8 <= chunk_end && continuation == 0; at += 8 + u16_at(at + 2))
    if (u16_at(at) == 0x10) continuation = at;
  ASSERT_NE(continuation, 0u) << "the root header has a continuation message";
  const size_t tokenizer = attribute_body(bytes, "tokenizer");
  ASSERT_GT(tokenizer, chunk_end) << "tokenizer's message lies in a continuation chunk";
  bytes[continuation + 2] = bytes[continuation + 3] = 0;  // its declared size: 0
  write_bytes(file_path, bytes);
  {
    h5::QuietErrors quiet;
    h5::Handle file =
        h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, "open");
    EXPECT_EQ(h5::read_string_attribute(file.get(), "tokenizer"), "bytes")
        << "HDF5 still follows it";
  }
  // Now the tokenizer's global heap: its collection (the value: sequence length u32, collection
  // address u64, object index u32) holds the string, then the free space (index 0), whose size
  // set to 0 would keep HDF5's walk in place for ever.
  const auto pad = [](size_t n) { return (n + 7) & ~size_t{7}; };
  const size_t value_at = tokenizer + 8 + pad(u16_at(tokenizer + 2)) + pad(u16_at(tokenizer + 4)) +
                          pad(u16_at(tokenizer + 6));
  const size_t collection = u64_at(value_at + 4);
  ASSERT_EQ(std::string(bytes.begin() + collection, bytes.begin() + collection + 4), "GCOL");
  const size_t string_object = collection + 16;
  ASSERT_EQ(u16_at(string_object), 1u) << "the string is the collection's first object";
  const size_t free_space = string_object + 16 + pad(u64_at(string_object + 8));
  ASSERT_EQ(u16_at(free_space), 0u) << "the free space follows it";
  for (int k = 0; k < 8; ++k) bytes[free_space + 8 + k] = 0;
  write_bytes(file_path, bytes);
  h5::QuietErrors quiet;
  h5::Handle file =
      h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, "open");
  // The check itself, not HDF5's read, so that a walk that missed the chunk fails here, not hangs.
  expect_error([&] { h5::check_global_heaps(file.get(), "tokenizer"); },
               {"corrupt global heap collection at byte " + std::to_string(collection),
                "a free-space object of size 0"});
}

// An integer whose datatype claims more bits than its 8 bytes: HDF5 1.10 converts the value bit
// by bit from the declared offset and precision and read 2 KB past it (H5T__bit_find under
// H5Aread, found by fuzz_token_file). Refused before the read, the offset's damage as well.
TEST_F(Hdf5IoTest, AnIntegerTypeWiderThanItsBytesIsRefused) {
  struct Damage {
    size_t field;       // byte of the fixed-point properties: 0 the bit offset, 2 the precision
    const char* spans;  // what the error then says
  };
  for (const Damage damage :
       {Damage{0, "spans bits 16384 to 16448"}, Damage{2, "spans bits 0 to 16384"}}) {
    const std::string file_path =
        write_attributes("wide_" + std::to_string(damage.field) + ".h5", 0);
    std::vector<uint8_t> bytes = read_bytes(file_path);
    const size_t body = attribute_body(bytes, "vocab_size");
    const size_t name_size = bytes[body + 2] | (bytes[body + 3] << 8);
    const size_t properties = body + 8 + ((name_size + 7) & ~size_t{7}) + 8;
    ASSERT_EQ(bytes[properties + 2], 64) << "64 bits of precision";
    bytes[properties + damage.field] = 0x00;
    bytes[properties + damage.field + 1] = 0x40;  // 16384
    write_bytes(file_path, bytes);
    h5::QuietErrors quiet;
    h5::Handle file = h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose,
                              "cannot open " + file_path);
    expect_error([&] { h5::read_int_attribute(file.get(), "vocab_size"); },
                 {std::string("attribute vocab_size: a damaged 8-byte type (its precision ") +
                  damage.spans + ", outside 0 to 64)"});
  }
}

// The same for a float's fields: an f32 dataset whose exponent claims 200 bits. The checkpoint
// readers check every tensor's type this way before they convert a value.
TEST_F(Hdf5IoTest, AFloatTypeWhoseExponentLeavesItsBitsIsRefused) {
  const std::string file_path = path("float.h5");
  {
    h5::Handle file = h5::own(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                              H5Fclose, "create");
    const hsize_t count = 4;
    h5::Handle space = h5::own(H5Screate_simple(1, &count, nullptr), H5Sclose, "space");
    h5::Handle dataset = h5::own(H5Dcreate2(file.get(), "w", H5T_IEEE_F32LE, space.get(),
                                            H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                 H5Dclose, "dataset");
    const float values[4] = {1, 2, 3, 4};
    h5::check(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values),
              "write");
  }
  std::vector<uint8_t> bytes = read_bytes(file_path);
  // Version 1 float message of IEEE f32 LE: its header (class, bit fields with the sign at 31,
  // size 4), then offset 0, precision 32, exponent at 23 of 8 bits, mantissa at 0 of 23, bias 127.
  const std::vector<uint8_t> f32 = {0x11, 0x20, 0x1f, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
                                    0x20, 0x00, 0x17, 0x08, 0x00, 0x17, 0x7f, 0x00, 0x00, 0x00};
  const auto found = std::search(bytes.begin(), bytes.end(), f32.begin(), f32.end());
  ASSERT_NE(found, bytes.end()) << "the f32 datatype message";
  found[13] = 200;  // the exponent's size in bits
  write_bytes(file_path, bytes);
  h5::QuietErrors quiet;
  h5::Handle file = h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose,
                            "cannot open " + file_path);
  h5::Handle dataset = h5::own(H5Dopen2(file.get(), "w", H5P_DEFAULT), H5Dclose, "open w");
  h5::Handle type = h5::own(H5Dget_type(dataset.get()), H5Tclose, "type of w");
  expect_error([&] { h5::check_number_type(type.get(), "w"); },
               {"w: a damaged 4-byte type (its exponent spans bits 23 to 223, outside 0 to 32)"});
}

// What the library writes and reads passes: integers of 1 to 8 bytes either way round, IEEE
// floats, and a 2-byte float with bf16's fields. Strings are not numbers.
TEST_F(Hdf5IoTest, NumberTypesWithinTheirBytesPass) {
  for (const hid_t type :
       {H5T_STD_U8LE, H5T_STD_I16BE, H5T_STD_I32LE, H5T_STD_U64BE, H5T_IEEE_F32LE, H5T_IEEE_F64BE})
    EXPECT_NO_THROW(h5::check_number_type(type, "type")) << H5Tget_size(type) << " bytes";
  h5::Handle bf16 = h5::own(H5Tcopy(H5T_IEEE_F32LE), H5Tclose, "copy");
  ASSERT_GE(H5Tset_fields(bf16.get(), 15, 7, 8, 0, 7), 0);
  ASSERT_GE(H5Tset_precision(bf16.get(), 16), 0);
  ASSERT_GE(H5Tset_size(bf16.get(), 2), 0);
  EXPECT_NO_THROW(h5::check_number_type(bf16.get(), "bf16"));
  expect_error([] { h5::check_number_type(H5T_C_S1, "name"); },
               {"name: not an integer or float type"});
}

// A 1-D int64 dataset of `length` elements in chunks of `chunk`, with the Fletcher-32 filter when
// `fletcher32`; chunk k is written raw (H5Dwrite_chunk, as the checkpoint writer does) with
// `stored[k]` bytes when given, else through H5Dwrite.
h5::Handle chunked_dataset(hid_t file, const char* name, hsize_t length, hsize_t chunk,
                           bool fletcher32, const std::vector<size_t>& stored = {}) {
  h5::Handle space = h5::own(H5Screate_simple(1, &length, nullptr), H5Sclose, "space");
  h5::Handle dcpl = h5::own(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "dcpl");
  EXPECT_GE(H5Pset_chunk(dcpl.get(), 1, &chunk), 0);
  if (fletcher32) {
    EXPECT_GE(H5Pset_fletcher32(dcpl.get()), 0);
  }
  h5::Handle dataset = h5::own(
      H5Dcreate2(file, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      H5Dclose, "dataset");
  if (stored.empty()) {
    std::vector<int64_t> values(length, 7);
    EXPECT_GE(
        H5Dwrite(dataset.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  }
  for (size_t k = 0; k < stored.size(); ++k) {
    const std::vector<char> bytes(stored[k], 0);
    const hsize_t offset = k * chunk;
    EXPECT_GE(H5Dwrite_chunk(dataset.get(), H5P_DEFAULT, 0, &offset, stored[k], bytes.data()), 0);
  }
  return dataset;
}

// HDF5 1.10's Fletcher-32 filter reads from a chunk's stored size less 4, unchecked: a chunk of
// 1 byte made H5Dread checksum gigabytes past its buffer (fuzz_checkpoint). Such a chunk is
// refused before the read, only where the read touches it; this test never reads it.
TEST_F(Hdf5IoTest, AChunkShorterThanItsChecksumIsRefused) {
  h5::Handle file =
      h5::own(H5Fcreate(path("chunks.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
              H5Fclose, "create");
  const size_t whole = 4 * sizeof(int64_t) + 4;  // 4 elements and the checksum
  h5::Handle damaged = chunked_dataset(file.get(), "damaged", 12, 4, true, {whole, 1, whole});
  EXPECT_NO_THROW(h5::check_chunk_sizes(damaged.get(), 0, 4));
  EXPECT_NO_THROW(h5::check_chunk_sizes(damaged.get(), 8, 4));
  expect_error([&] { h5::check_chunk_sizes(damaged.get(), 3, 2); },
               {"the chunk at row 4 stores 1 byte, fewer than its 4-byte Fletcher-32 checksum"});
  expect_error([&] { h5::check_chunk_sizes(damaged.get(), 0, 12); }, {"the chunk at row 4"});
}

TEST_F(Hdf5IoTest, IntactAndUnfilteredChunksPass) {
  h5::Handle file =
      h5::own(H5Fcreate(path("chunks.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
              H5Fclose, "create");
  h5::Handle checksummed = chunked_dataset(file.get(), "checksummed", 10, 4, true);
  h5::Handle plain = chunked_dataset(file.get(), "plain", 10, 4, false, {1, 3});  // no checksum
  for (hid_t dataset : {checksummed.get(), plain.get()}) {
    EXPECT_NO_THROW(h5::check_chunk_sizes(dataset, 0, 10));
    EXPECT_NO_THROW(h5::check_chunk_sizes(dataset, 9, 1));
  }
  // Chunks never written (the third of "plain") are not in the index: nothing to check.
  EXPECT_NO_THROW(h5::check_chunk_sizes(plain.get(), 8, 2));
}

// The token-file reader checks the chunks of the range it reads, with the file and dataset named.
TEST_F(Hdf5IoTest, TokenReaderRefusesAChunkShorterThanItsChecksum) {
  const std::string file_path = path("tokens.h5");
  write_token_file(file_path, {1, 2, 3, 4}, {5, 6}, 256, "bytes");
  {
    h5::Handle file =
        h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose, "open");
    ASSERT_GE(H5Ldelete(file.get(), "/train", H5P_DEFAULT), 0);
    chunked_dataset(file.get(), "/train", 8, 4, true, {4 * sizeof(int64_t) + 4, 2});
  }
  expect_error([&] { read_token_file(file_path); },
               {file_path + ": dataset /train: the chunk at row 4 stores 2 bytes"});
}

// The token-file reader goes through the same check, with the file's name in front.
// The file is laid out as h5py writes one by default (version 1 headers, no checksums): our own
// writer's files carry checksummed headers, where HDF5 finds such damage first.
TEST_F(Hdf5IoTest, TokenFileReaderNamesTheFileAndTheDamage) {
  const std::string file_path = write_attributes("tokens.h5", 0);
  {
    h5::Handle file =
        h5::own(H5Fopen(file_path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose, "open");
    for (const auto& [name, tokens] :
         {std::pair<const char*, std::vector<int64_t>>{"/train", {1, 2, 3, 4}}, {"/val", {5, 6}}}) {
      const hsize_t length = tokens.size();
      h5::Handle space = h5::own(H5Screate_simple(1, &length, nullptr), H5Sclose, "space");
      h5::Handle dataset = h5::own(H5Dcreate2(file.get(), name, H5T_STD_I64LE, space.get(),
                                              H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                   H5Dclose, name);
      ASSERT_GE(
          H5Dwrite(dataset.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data()),
          0);
    }
  }
  ASSERT_EQ(read_token_file(file_path).train.size(), 4u) << "the intact file reads";
  std::vector<uint8_t> bytes = read_bytes(file_path);
  const size_t body = attribute_body(bytes, "vocab_size");
  bytes[body + 6] = 0x08;
  bytes[body + 7] = 0xFE;
  write_bytes(file_path, bytes);
  expect_error([&] { read_token_file(file_path); }, {file_path + ": damaged attribute message"});
}

}  // namespace
}  // namespace sy
