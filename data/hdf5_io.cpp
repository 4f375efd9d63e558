#include "data/hdf5_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

namespace sy::h5 {

namespace {

herr_t innermost_message(unsigned n, const H5E_error2_t* error, void* data) {
  auto* message = static_cast<std::string*>(data);
  if (n == 0 && error->desc) *message = error->desc;
  return 0;
}

}  // namespace

void quiet_library_exit() {
  static const bool registered = [] {
    H5open();  // registers HDF5's exit handler first, so that ours runs before it
    return std::atexit([] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }) == 0;
  }();
  (void)registered;
}

std::string last_error() {
  // Upward: the most specific error (where it was detected) comes first.
  std::string innermost;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_message, &innermost);
  return innermost;
}

void check(herr_t status, const std::string& what) {
  if (status >= 0) return;
  const std::string cause = last_error();
  throw Hdf5Error(cause.empty() ? what : what + ": " + cause);
}

Handle own(hid_t id, Handle::CloseFn close_fn, const std::string& what) {
  if (id < 0) check(-1, what);
  return Handle(id, close_fn);
}

Handle checksummed_metadata_access() {
  const char* what = "cannot set up the file format";
  Handle fapl = own(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, what);
  check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18), what);
  return fapl;
}

std::string library_version() {
  unsigned major = 0, minor = 0, release = 0;
  H5get_libversion(&major, &minor, &release);
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
}

void write_int_attribute(hid_t object, const char* name, int64_t value) {
  const std::string what = std::string("cannot write attribute ") + name;
  Handle space = own(H5Screate(H5S_SCALAR), H5Sclose, what);
  Handle attr = own(H5Acreate2(object, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                    H5Aclose, what);
  check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), what);
}

void write_string_attribute(hid_t object, const char* name, const std::string& value) {
  const std::string what = std::string("cannot write attribute ") + name;
  Handle type = own(H5Tcopy(H5T_C_S1), H5Tclose, what);
  check(H5Tset_size(type.get(), H5T_VARIABLE), what);
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  Handle space = own(H5Screate(H5S_SCALAR), H5Sclose, what);
  Handle attr =
      own(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, what);
  const char* text = value.c_str();
  check(H5Awrite(attr.get(), type.get(), &text), what);
}

bool has_attribute(hid_t object, const char* name) {
  check_attribute_messages(object);  // HDF5 1.10 decodes a damaged one past its buffer
  const htri_t exists = H5Aexists(object, name);
  check(exists, std::string("cannot query attribute ") + name);
  return exists > 0;
}

namespace {

Handle open_attribute(hid_t object, const char* name) {
  if (!has_attribute(object, name)) throw Hdf5Error(std::string("no attribute ") + name);
  return own(H5Aopen(object, name, H5P_DEFAULT), H5Aclose,
             std::string("cannot open attribute ") + name);
}

// One value, stored whole: HDF5 1.10's H5Aread copies the datatype's size from the value it
// decoded without checking that the value is that long (a damaged file made it read past the
// buffer: heap-buffer-overflow under H5A__read, found by fuzz_token_file).
void expect_single_value(hid_t attr, const char* name) {
  Handle space = own(H5Aget_space(attr), H5Sclose, std::string("cannot inspect attribute ") + name);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw Hdf5Error(std::string("attribute ") + name + " is not a single value");
  Handle type = own(H5Aget_type(attr), H5Tclose, std::string("cannot inspect attribute ") + name);
  const size_t type_size = H5Tget_size(type.get());
  const hsize_t stored = H5Aget_storage_size(attr);
  if (type_size == 0 || stored < type_size)
    throw Hdf5Error(std::string("attribute ") + name + " stores " + std::to_string(stored) +
                    " bytes of a " + std::to_string(type_size) + "-byte value");
}

}  // namespace

void check_number_type(hid_t type, const std::string& what) {
  const H5T_class_t type_class = H5Tget_class(type);
  if (type_class != H5T_INTEGER && type_class != H5T_FLOAT)
    throw Hdf5Error(what + ": not an integer or float type");
  const size_t size = H5Tget_size(type);
  if (size < 1 || size > 8)
    throw Hdf5Error(what + ": a " + std::to_string(size) + "-byte number (1 to 8 bytes)");
  const int64_t bits = 8 * static_cast<int64_t>(size);
  const int64_t precision = static_cast<int64_t>(H5Tget_precision(type));
  const int64_t offset = H5Tget_offset(type);
  // [first, first + count) must lie inside [low, high).
  const auto inside = [&](const char* field, int64_t first, int64_t count, int64_t low,
                          int64_t high) {
    if (count < 1 || first < low || first + count > high)
      throw Hdf5Error(what + ": a damaged " + std::to_string(size) + "-byte type (its " + field +
                      " spans bits " + std::to_string(first) + " to " +
                      std::to_string(first + count) + ", outside " + std::to_string(low) + " to " +
                      std::to_string(high) + ")");
  };
  inside("precision", offset, precision, 0, bits);
  if (type_class == H5T_INTEGER) return;
  size_t sign = 0, exponent = 0, exponent_bits = 0, mantissa = 0, mantissa_bits = 0;
  check(H5Tget_fields(type, &sign, &exponent, &exponent_bits, &mantissa, &mantissa_bits), what);
  const int64_t high = offset + precision;
  inside("sign", static_cast<int64_t>(sign), 1, offset, high);
  inside("exponent", static_cast<int64_t>(exponent), static_cast<int64_t>(exponent_bits), offset,
         high);
  inside("mantissa", static_cast<int64_t>(mantissa), static_cast<int64_t>(mantissa_bits), offset,
         high);
}

int64_t read_int_attribute(hid_t object, const char* name) {
  Handle attr = open_attribute(object, name);
  Handle type = own(H5Aget_type(attr.get()), H5Tclose, std::string("cannot inspect attribute ") + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw Hdf5Error(std::string("attribute ") + name + " is not an integer");
  check_number_type(type.get(), std::string("attribute ") + name);
  expect_single_value(attr.get(), name);
  int64_t value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), std::string("cannot read attribute ") + name);
  return value;
}

std::string read_string_attribute(hid_t object, const char* name) {
  const std::string what = std::string("cannot read attribute ") + name;
  Handle attr = open_attribute(object, name);
  Handle type = own(H5Aget_type(attr.get()), H5Tclose, what);
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw Hdf5Error(std::string("attribute ") + name + " is not a string");
  expect_single_value(attr.get(), name);
  const htri_t is_variable = H5Tis_variable_str(type.get());
  check(is_variable, what);
  Handle memory_type = own(H5Tcopy(H5T_C_S1), H5Tclose, what);
  check(H5Tset_cset(memory_type.get(), H5Tget_cset(type.get())), what);
  if (is_variable > 0) {
    try {
      check_global_heaps(object, name);  // HDF5 1.10 can loop for ever on a corrupt one
    } catch (const Hdf5Error& error) {
      throw Hdf5Error(std::string("attribute ") + name + ": " + error.what());
    }
    check(H5Tset_size(memory_type.get(), H5T_VARIABLE), what);
    char* text = nullptr;
    check(H5Aread(attr.get(), memory_type.get(), &text), what);
    std::string value = text ? text : "";
    if (text) H5free_memory(text);
    return value;
  }
  const size_t size = H5Tget_size(type.get());
  if (size == 0) throw Hdf5Error(what);
  check(H5Tset_size(memory_type.get(), size), what);
  std::string value(size, '\0');
  check(H5Aread(attr.get(), memory_type.get(), value.data()), what);
  // Fixed-length strings come padded with NULs or spaces.
  const char pad = H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD ? ' ' : '\0';
  const size_t nul = value.find('\0');
  if (nul != std::string::npos) value.resize(nul);
  while (!value.empty() && value.back() == pad) value.pop_back();
  return value;
}

namespace {

// The bytes of a file, read with pread: the heap check looks at the raw file, beside HDF5.
class RawFile {
 public:
  explicit RawFile(const std::string& path) : descriptor_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    struct stat info {};
    if (descriptor_ >= 0 && ::fstat(descriptor_, &info) == 0) size_ = static_cast<uint64_t>(info.st_size);
  }
  ~RawFile() {
    if (descriptor_ >= 0) ::close(descriptor_);
  }
  RawFile(const RawFile&) = delete;
  RawFile& operator=(const RawFile&) = delete;
  bool valid() const { return descriptor_ >= 0; }
  uint64_t size() const { return size_; }
  // [offset, offset + length) clipped to the file; empty when nothing could be read.
  std::vector<uint8_t> read(uint64_t offset, uint64_t length) const {
    if (offset >= size_) return {};
    std::vector<uint8_t> bytes(std::min(length, size_ - offset));
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t got = ::pread(descriptor_, bytes.data() + done, bytes.size() - done,
                                  static_cast<off_t>(offset + done));
      if (got <= 0) break;
      done += static_cast<size_t>(got);
    }
    bytes.resize(done);
    return bytes;
  }

 private:
  int descriptor_ = -1;
  uint64_t size_ = 0;
};

uint64_t little_endian(const uint8_t* bytes, int count) {
  uint64_t value = 0;
  for (int k = count; k-- > 0;) value = (value << 8) | bytes[k];
  return value;
}

// A global heap collection: "GCOL", version 1, 3 reserved bytes, its size (8 bytes, header
// included), then objects of a 16-byte header (index u16, refcount u16, 4 reserved, size u64)
// and their data padded to 8; index 0 is the free space, whose size already counts its header.
// Returns "" when HDF5's walk over it ends, else why not.
// The indices of the objects it holds (free space excluded) go to *indices.
std::string heap_walk_problem(const std::vector<uint8_t>& heap, std::set<uint64_t>* indices) {
  constexpr uint64_t kHeader = 16;
  const uint64_t end = heap.size();
  uint64_t at = kHeader;
  while (at < end) {
    if (end - at < kHeader) break;  // too small for an object header: HDF5 takes it as free space
    const uint64_t index = little_endian(&heap[at], 2);
    const uint64_t size = little_endian(&heap[at + 8], 8);
    if (size > end) return "object " + std::to_string(index) + " is larger than its collection";
    const uint64_t need = index > 0 ? kHeader + ((size + 7) & ~uint64_t{7}) : size;
    if (need == 0) return "a free-space object of size 0 (HDF5 would loop for ever)";
    if (need > end - at) return "object " + std::to_string(index) + " runs past the collection";
    if (index > 0) indices->insert(index);
    at += need;
  }
  return "";
}

// The bytes of the variable-length value of attribute `name` claim, when `header` holds its
// attribute message (version 1 pads name, datatype and dataspace to 8 bytes; 2 and 3 do not; 3
// adds an encoding byte): sequence length (u32, first in the value) times the size of the vlen
// datatype's base type. 0 when no message for `name` parses as one with a vlen datatype. HDF5
// allocates and zeroes that many bytes before it reads the heap: a damaged length made a 7 KB
// token file take 20 GB and 80 s to refuse (found by fuzz_token_file).
uint64_t vlen_attribute_claim(const std::vector<uint8_t>& header, const std::string& name) {
  const std::string key = name + '\0';
  const auto pad = [](uint64_t size, int version) {
    return version == 1 ? (size + 7) & ~uint64_t{7} : size;
  };
  uint64_t claim = 0;
  for (size_t name_at = 9; name_at + key.size() <= header.size(); ++name_at) {
    if (std::memcmp(&header[name_at], key.data(), key.size()) != 0) continue;
    for (const int version : {1, 2, 3}) {
      const size_t start = name_at - (version == 3 ? 9 : 8);
      if (header[start] != version || little_endian(&header[start + 2], 2) != key.size()) continue;
      const uint64_t type_at = name_at + pad(key.size(), version);
      const uint64_t type_size = little_endian(&header[start + 4], 2);
      const uint64_t space_size = little_endian(&header[start + 6], 2);
      const uint64_t value_at = type_at + pad(type_size, version) + pad(space_size, version);
      // A vlen datatype (class 9) of 8 header bytes, then its base type, whose size is at +4.
      if (type_size < 16 || value_at + 4 > header.size() || (header[type_at] & 0x0f) != 9) continue;
      const uint64_t base_size = little_endian(&header[type_at + 8 + 4], 4);
      claim = std::max(claim, little_endian(&header[value_at], 4) * base_size);
    }
  }
  return claim;
}

// Reads at most this much of a header: real ones are KB.
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 20;

// The file behind `object`, opened again for raw reads, with what its addresses need.
struct RawObject {
  explicit RawObject(hid_t object) : raw(file_path(object)) {
    check(H5Oget_info2(object, &info, H5O_INFO_BASIC | H5O_INFO_HDR),
          "cannot read the object header of " + object_name(object));
    Handle file = own(H5Iget_file_id(object), H5Fclose, "cannot inspect file");
    Handle plist = own(H5Fget_create_plist(file.get()), H5Pclose, "cannot inspect file");
    check(H5Pget_userblock(plist.get(), &base), "cannot inspect file");
    check(H5Pget_sizes(plist.get(), &address_bytes, &length_bytes), "cannot inspect file");
  }
  static std::string object_name(hid_t object) {
    const ssize_t length = H5Iget_name(object, nullptr, 0);
    if (length <= 0) return "an object";
    std::string name(static_cast<size_t>(length) + 1, '\0');
    if (H5Iget_name(object, name.data(), name.size()) < 0) return "an object";
    name.resize(static_cast<size_t>(length));
    return name == "/" ? "the root group" : name;
  }
  static std::string file_path(hid_t object) {
    const ssize_t name_length = H5Fget_name(object, nullptr, 0);
    if (name_length <= 0) check(-1, "cannot name the file");
    std::string path(static_cast<size_t>(name_length) + 1, '\0');
    if (H5Fget_name(object, path.data(), path.size()) < 0) check(-1, "cannot name the file");
    path.resize(static_cast<size_t>(name_length));
    return path;
  }
  RawFile raw;
  H5O_info_t info{};
  hsize_t base = 0;  // addresses count from the end of a user block
  size_t address_bytes = 8, length_bytes = 8;  // the superblock's sizes of offsets and lengths
};

// How many bytes the datatype message at `type` (at most `size` of them) takes, or the reason
// HDF5 1.10's decoder (H5O_dtype_decode_helper, H5Odtype.c) would read past it: it trusts each
// member count and strdup()s the names of enum and compound members and the opaque tag up to
// their NUL. Found by fuzz_token_file: an attribute's vlen string turned into an enum, whose
// "names" ran off the header (heap-buffer-overflow in strdup, under H5Aexists).
struct DatatypeExtent {
  uint64_t bytes = 0;
  std::string problem;
};
DatatypeExtent datatype_extent(const uint8_t* type, uint64_t size, int depth = 0) {
  const auto fail = [](const std::string& why) { return DatatypeExtent{0, why}; };
  if (depth > 8) return fail("its datatype nests too deep");
  if (size < 8) return fail("its datatype is " + std::to_string(size) + " bytes");
  const int type_class = type[0] & 0x0f, version = type[0] >> 4;
  const uint64_t members = little_endian(&type[1], 2), element_size = little_endian(&type[4], 4);
  const auto pad8 = [version](uint64_t n) { return version < 3 ? (n + 7) & ~uint64_t{7} : n; };
  // A NUL-terminated name at `at`: its length with the NUL (padded), or 0 when it has no NUL.
  const auto name_bytes = [&](uint64_t at) -> uint64_t {
    if (at >= size) return 0;
    const void* nul = std::memchr(&type[at], 0, size - at);
    if (!nul) return 0;
    return pad8(static_cast<const uint8_t*>(nul) - &type[at] + 1);
  };
  uint64_t at = 8;
  switch (type_class) {
    case 0:
    case 4:
      at += 4;
      break;  // fixed-point, bitfield: offset and precision
    case 1:
      at += 12;
      break;  // floating-point
    case 2:
      at += 2;
      break;  // time
    case 3:
    case 7:
      break;   // string, reference
    case 5: {  // opaque: a NUL-terminated tag
      if (type[1] == 0) break;
      const uint64_t tag = name_bytes(at);
      if (tag == 0) return fail("its opaque tag has no NUL");
      at += tag;
      break;
    }
    case 6: {  // compound: name, offset, (version 1: dimensions), member type, per member
      const int offset_bytes = element_size < 256                   ? 1
                               : element_size < 65536               ? 2
                               : element_size < (uint64_t{1} << 24) ? 3
                                                                    : 4;
      for (uint64_t m = 0; m < members; ++m) {
        const uint64_t name = name_bytes(at);
        if (name == 0) return fail("a compound member's name has no NUL");
        at += name + (version < 3 ? 4 : offset_bytes) + (version == 1 ? 28 : 0);
        if (at > size) break;
        const DatatypeExtent member = datatype_extent(type + at, size - at, depth + 1);
        if (!member.problem.empty()) return member;
        at += member.bytes;
      }
      break;
    }
    case 8: {  // enum: base type, then the names, then the values
      const DatatypeExtent base = datatype_extent(type + at, size - at, depth + 1);
      if (!base.problem.empty()) return base;
      at += base.bytes;
      const uint64_t base_size = little_endian(&type[at - base.bytes + 4], 4);
      for (uint64_t m = 0; m < members; ++m) {
        const uint64_t name = name_bytes(at);
        if (name == 0) return fail("an enum member's name has no NUL");
        at += name;
      }
      if (base_size != 0 && members > (size - std::min(at, size)) / base_size)
        return fail("its enum values run past the message");
      at += members * base_size;
      break;
    }
    case 9: {  // variable-length: the base type
      const DatatypeExtent base = datatype_extent(type + at, size - at, depth + 1);
      if (!base.problem.empty()) return base;
      at += base.bytes;
      break;
    }
    case 10: {  // array: rank, (reserved,) dimensions, (permutation,) base type
      if (at >= size) return fail("its array datatype is cut short");
      const uint64_t rank = type[at];
      at += (version < 3 ? 4 : 1) + rank * (version < 3 ? 8 : 4);
      if (at > size) break;
      const DatatypeExtent base = datatype_extent(type + at, size - at, depth + 1);
      if (!base.problem.empty()) return base;
      at += base.bytes;
      break;
    }
    default:
      return fail("its datatype class " + std::to_string(type_class) + " is unknown");
  }
  if (at > size)
    return fail("its datatype needs " + std::to_string(at) + " of its " + std::to_string(size) +
                " bytes");
  return {at, ""};
}

// Why the body of a version 1, 2 or 3 attribute message would lead HDF5 1.10's decoder
// (H5O_attr_decode, H5Oattr.c) past the message, or "" when its sizes fit: the decoder trusts the
// name, datatype and dataspace lengths and copies the value, elements x element size, with no
// bound. Found by fuzz_token_file: a damaged length made H5Aexists crash (SIGSEGV in memcpy).
std::string attribute_message_problem(const uint8_t* body, uint64_t size, size_t length_bytes) {
  if (size < 8) return "shorter than its fixed fields";
  const int version = body[0];
  if (version < 1 || version > 3) return "version " + std::to_string(version);
  const bool type_shared = version >= 2 && (body[1] & 1);
  const bool space_shared = version >= 2 && (body[1] & 2);
  const uint64_t name_size = little_endian(&body[2], 2);  // with its NUL
  const uint64_t type_size = little_endian(&body[4], 2);
  const uint64_t space_size = little_endian(&body[6], 2);
  const auto pad = [version](uint64_t n) { return version == 1 ? (n + 7) & ~uint64_t{7} : n; };
  const uint64_t name_at = version == 3 ? 9 : 8;
  const uint64_t type_at = name_at + pad(name_size);
  const uint64_t space_at = type_at + pad(type_size);
  const uint64_t value_at = space_at + pad(space_size);
  if (value_at > size)
    return "its name, datatype and dataspace claim " + std::to_string(value_at) + " of its " +
           std::to_string(size) + " bytes";
  if (name_size == 0 || body[name_at + name_size - 1] != 0 ||
      std::memchr(&body[name_at], 0, name_size) != &body[name_at + name_size - 1])
    return "its name is not " + std::to_string(name_size - 1) + " characters and a NUL";
  if (type_shared || space_shared) return "";  // sizes live in another message
  if (type_size < 8) return "its datatype is " + std::to_string(type_size) + " bytes";
  if (const DatatypeExtent type = datatype_extent(&body[type_at], type_size); !type.problem.empty())
    return type.problem;
  const uint64_t element_size = little_endian(&body[type_at + 4], 4);
  // Dataspace: version 1 (rank, flags, 5 reserved) or 2 (rank, flags, type), then rank sizes
  // (and rank maxima when flags bit 0 is set).
  const uint8_t* space = &body[space_at];
  if (space_size < 4 || (space[0] != 1 && space[0] != 2)) return "its dataspace is damaged";
  const uint64_t rank = space[1];
  const uint64_t dims_at = space[0] == 1 ? 8 : 4;
  const uint64_t dims_bytes = rank * length_bytes * ((space[2] & 1) ? 2 : 1);
  if (rank > 32 || (rank > 0 && dims_at + dims_bytes > space_size)) return "its dataspace is damaged";
  uint64_t elements = space[0] == 2 && space[3] == 2 ? 0 : 1;  // a null dataspace holds none
  for (uint64_t k = 0; k < rank; ++k) {
    const uint64_t extent = little_endian(&space[dims_at + k * length_bytes], static_cast<int>(length_bytes));
    if (extent != 0 && elements > (size - value_at) / extent) elements = UINT64_MAX;
    else elements *= extent;
  }
  const uint64_t value_bytes = elements == UINT64_MAX || (element_size != 0 && elements >
      (size - value_at) / element_size) ? UINT64_MAX : elements * element_size;
  if (value_bytes > size - value_at)
    return "its value claims more than the " + std::to_string(size - value_at) + " bytes left";
  return "";
}

}  // namespace

namespace {

constexpr int kAttributeMessage = 0x0C, kContinuationMessage = 0x10;

// One message of an object header as the file holds it.
struct HeaderMessage {
  int type = 0;
  uint8_t flags = 0;
  uint64_t file_offset = 0;  // of its message header
  const uint8_t* body = nullptr;
  uint64_t size = 0;         // clipped to its chunk
  uint64_t available = 0;    // the chunk's message bytes from `body` on (>= size)
};

// The chunks of `object`'s header, read beside HDF5, and their messages: the first chunk, then
// every continuation message's chunk, in the order met (at most 64, each at most 1 MiB).
//   version 1: version 1, reserved, message count (u16), reference count (u32), the first
//              chunk's size (u32), padding to 16, then messages of type (u16), body size (u16),
//              flags, 3 reserved; continuation chunks hold messages only.
//   version 2: "OHDR", version 2, flags (bit 5: four times, bit 4: two phase-change u16s, bits
//              0-1: the width of the first chunk's size), that size, then messages of type
//              (u8), body size (u16), flags, and a u16 creation order when flags bit 2 is set;
//              a 4-byte checksum ends each chunk; continuation chunks begin with "OCHK".
class ObjectHeader {
 public:
  explicit ObjectHeader(const RawObject& object) : object_(object) {
    const std::vector<uint8_t> start = object.raw.read(object.base + object.info.addr, 32);
    if (start.size() >= 16 && start[0] == 1) {
      version_ = 1;
      add_chunk(object.info.addr + 16, little_endian(&start[8], 4), 0, 0);
    } else if (start.size() >= 8 && std::memcmp(start.data(), "OHDR", 4) == 0 && start[4] == 2) {
      version_ = 2;
      const uint8_t flags = start[5];
      message_header_ = (flags & 0x04) ? 6 : 4;
      const uint64_t size_at = 6 + ((flags & 0x20) ? 16 : 0) + ((flags & 0x10) ? 4 : 0);
      const int size_bytes = 1 << (flags & 3);
      if (size_at + size_bytes <= start.size()) {
        const uint64_t messages = little_endian(&start[size_at], size_bytes);
        add_chunk(object.info.addr, size_at + size_bytes + messages + 4, size_at + size_bytes, 4);
      }
    }
    for (size_t c = 0; c < chunks_.size(); ++c) {
      // Collected first: adding a chunk moves the one being walked.
      std::vector<std::pair<uint64_t, uint64_t>> continuations;
      for_each_message_of(chunks_[c], [&](const HeaderMessage& message) {
        if (message.type != kContinuationMessage) return;
        const int address_bytes = static_cast<int>(object.address_bytes);
        const int length_bytes = static_cast<int>(object.length_bytes);
        // HDF5 1.10 decodes the address and length whatever size the message declares (it
        // followed a size-0 continuation into attributes this walk never saw, then looped in
        // their global heap: found by fuzz_token_file), so the walk reads them as it does.
        if (message.available < static_cast<uint64_t>(address_bytes + length_bytes)) return;
        continuations.emplace_back(little_endian(message.body, address_bytes),
                                   little_endian(message.body + address_bytes, length_bytes));
      });
      for (const auto& [address, length] : continuations) {
        if (version_ == 1) add_chunk(address, length, 0, 0);
        else add_chunk(address, length, 4, 4);  // "OCHK" ... checksum
      }
    }
  }

  int version() const { return version_; }  // 0: neither layout (not ours to judge)

  // Each chunk's bytes, whole: what the heap check scans for addresses.
  template <class F>
  void for_each_chunk(F&& visit) const {
    for (const Chunk& chunk : chunks_) visit(chunk.bytes);
  }

  template <class F>
  void for_each_message(F&& visit) const {
    for (const Chunk& chunk : chunks_) for_each_message_of(chunk, visit);
  }

 private:
  struct Chunk {
    uint64_t address = 0;
    std::vector<uint8_t> bytes;
    uint64_t messages_at = 0, messages_end = 0;
  };

  void add_chunk(uint64_t address, uint64_t length, uint64_t head, uint64_t tail) {
    constexpr size_t kMaxChunks = 64;
    if (chunks_.size() >= kMaxChunks || length > kMaxHeaderBytes || length < head + tail ||
        !seen_.insert(address).second)
      return;
    Chunk chunk{address, object_.raw.read(object_.base + address, length), head, 0};
    if (version_ == 2 && head == 4 && (chunk.bytes.size() < 4 || std::memcmp(chunk.bytes.data(), "OCHK", 4) != 0))
      return;  // not a continuation chunk: HDF5 refuses it on its own
    chunk.messages_end = chunk.bytes.size() >= tail ? chunk.bytes.size() - tail : 0;
    chunks_.push_back(std::move(chunk));
  }

  template <class F>
  void for_each_message_of(const Chunk& chunk, F&& visit) const {
    const std::vector<uint8_t>& bytes = chunk.bytes;
    const uint64_t header = version_ == 1 ? 8 : message_header_;
    for (uint64_t at = chunk.messages_at; at + header <= chunk.messages_end;) {
      HeaderMessage message;
      message.type = static_cast<int>(version_ == 1 ? little_endian(&bytes[at], 2) : bytes[at]);
      const uint64_t size_at = version_ == 1 ? 2 : 1;
      message.size = std::min<uint64_t>(little_endian(&bytes[at + size_at], 2),
                                        chunk.messages_end - at - header);
      message.flags = bytes[at + size_at + 2];
      message.file_offset = object_.base + chunk.address + at;
      message.body = &bytes[at + header];
      message.available = chunk.messages_end - at - header;
      visit(message);
      at += header + message.size;
    }
  }

  const RawObject& object_;
  int version_ = 0;
  uint64_t message_header_ = 4;  // version 2's
  std::vector<Chunk> chunks_;
  std::set<uint64_t> seen_;
};

}  // namespace

void check_attribute_messages(hid_t object) {
  const RawObject object_bytes(object);
  if (!object_bytes.raw.valid()) return;  // HDF5 has it open; a file we cannot reopen is not ours to judge
  const ObjectHeader header(object_bytes);
  // Version 2 headers carry checksums that HDF5 verifies before decoding anything.
  if (header.version() != 1) return;
  header.for_each_message([&](const HeaderMessage& message) {
    const bool shared = message.flags & 2;  // the body points at a message stored elsewhere
    if (message.type != kAttributeMessage || shared) return;
    const std::string problem =
        attribute_message_problem(message.body, message.size, object_bytes.length_bytes);
    if (!problem.empty())
      throw Hdf5Error("damaged attribute message at byte " + std::to_string(message.file_offset) +
                      ": " + problem);
  });
}

void check_global_heaps(hid_t object, const char* attribute) {
  constexpr uint64_t kMaxHeapBytes = uint64_t{64} << 20;
  const RawObject object_bytes(object);
  const RawFile& raw = object_bytes.raw;
  if (!raw.valid()) return;  // HDF5 has it open; a file we cannot reopen is not ours to judge
  const uint64_t base = object_bytes.base;
  const ObjectHeader header(object_bytes);
  if (attribute) {
    header.for_each_chunk([&](const std::vector<uint8_t>& chunk) {
      const uint64_t claim = vlen_attribute_claim(chunk, attribute);
      if (claim > raw.size())
        throw Hdf5Error("its variable-length value claims " + std::to_string(claim) +
                        " bytes, more than the file's " + std::to_string(raw.size()));
    });
  }
  // A variable-length value of an attribute holds heap IDs (length, collection address, object
  // index): every 8-byte value in an attribute message is a candidate address. Each collection
  // is walked once; the index after an address that names one must be an object it holds:
  // HDF5 1.10 reads `obj[index]` unchecked (a SIGSEGV in H5HG_read, found by fuzz_token_file).
  std::map<uint64_t, std::set<uint64_t>> collections;  // address -> object indices
  std::set<uint64_t> not_collections;
  header.for_each_message([&](const HeaderMessage& message) {
    if (message.type != kAttributeMessage) return;
    for (uint64_t at = 0; at + 8 <= message.size; ++at) {
      const uint64_t address = little_endian(message.body + at, 8);
      if (address >= raw.size() || base + address + 16 > raw.size()) continue;
      if (not_collections.count(address)) continue;
      auto found = collections.find(address);
      if (found == collections.end()) {
        const std::vector<uint8_t> start = raw.read(base + address, 16);
        const uint64_t size = start.size() < 16 ? 0 : little_endian(&start[8], 8);
        // HDF5 itself refuses a bad header or a short read without looping.
        if (start.size() < 16 || std::memcmp(start.data(), "GCOL", 4) != 0 || start[4] != 1 ||
            size < 16 || size > kMaxHeapBytes || size > raw.size() ||
            base + address > raw.size() - size) {
          not_collections.insert(address);
          continue;
        }
        std::set<uint64_t> indices;
        const std::string problem = heap_walk_problem(raw.read(base + address, size), &indices);
        if (!problem.empty())
          throw Hdf5Error("corrupt global heap collection at byte " +
                          std::to_string(base + address) + ": " + problem);
        found = collections.emplace(address, std::move(indices)).first;
      }
      if (at + 12 > message.size) continue;  // no index follows: not a heap ID
      const uint64_t index = little_endian(message.body + at + 8, 4);
      if (!found->second.count(index))
        throw Hdf5Error("a heap ID names object " + std::to_string(index) +
                        ", which the global heap collection at byte " +
                        std::to_string(base + address) + " does not hold");
    }
  });
}

std::vector<int64_t> dataset_shape(hid_t dataset) {
  Handle space = own(H5Dget_space(dataset), H5Sclose, "cannot inspect dataset");
  const int ndims = H5Sget_simple_extent_ndims(space.get());
  if (ndims < 0) check(-1, "cannot inspect dataset");
  std::vector<hsize_t> dims(ndims);
  if (ndims > 0) check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), "cannot inspect dataset");
  return std::vector<int64_t>(dims.begin(), dims.end());
}

namespace {
// The position of the Fletcher-32 filter in the dataset's pipeline, or -1.
int fletcher32_position(hid_t dcpl) {
  const int filters = H5Pget_nfilters(dcpl);
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0, config = 0;
    size_t values = 0;
    if (H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &values, nullptr, 0, nullptr,
                       &config) == H5Z_FILTER_FLETCHER32)
      return i;
  }
  return -1;
}
}  // namespace

void check_chunk_sizes(hid_t dataset, int64_t row, int64_t rows) {
  const char* what = "cannot inspect the dataset's chunks";
  Handle dcpl = own(H5Dget_create_plist(dataset), H5Pclose, what);
  if (H5Pget_layout(dcpl.get()) != H5D_CHUNKED || rows <= 0) return;
  const int position = fletcher32_position(dcpl.get());
  if (position < 0) return;
  const std::vector<int64_t> shape = dataset_shape(dataset);
  if (shape.empty()) return;
  std::vector<hsize_t> chunk(shape.size());
  if (H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) !=
      static_cast<int>(chunk.size()))
    check(-1, what);
  for (hsize_t c : chunk)
    if (c == 0) throw Hdf5Error("a chunk dimension of 0 (a damaged file)");
  // Chunk origins: dimension 0 over the rows, every other dimension whole.
  std::vector<hsize_t> first(shape.size(), 0), end(shape.begin(), shape.end());
  first[0] = static_cast<hsize_t>(row) / chunk[0] * chunk[0];
  end[0] = std::min<hsize_t>(end[0], static_cast<hsize_t>(row + rows));
  std::vector<hsize_t> offset = first;
  while (offset[0] < end[0]) {
    unsigned filter_mask = 0;
    haddr_t address = HADDR_UNDEF;
    hsize_t stored = 0;
    check(H5Dget_chunk_info_by_coord(dataset, offset.data(), &filter_mask, &address, &stored),
          what);
    const bool checksummed = (filter_mask & (1u << position)) == 0;
    if (address != HADDR_UNDEF && checksummed && stored < 4)
      throw Hdf5Error("the chunk at row " + std::to_string(offset[0]) + " stores " +
                      std::to_string(stored) + (stored == 1 ? " byte" : " bytes") +
                      ", fewer than its 4-byte Fletcher-32 checksum (a damaged file)");
    // The next chunk origin, the last dimension fastest.
    size_t d = shape.size();
    while (d-- > 0) {
      offset[d] += chunk[d];
      if (d == 0 || offset[d] < end[d]) break;
      offset[d] = first[d];
    }
  }
}

bool link_exists(hid_t file, const std::string& path) {
  // H5Lexists needs every intermediate link to exist, so test the prefixes in turn.
  size_t next = path.find('/', 1);
  while (true) {
    const std::string prefix = next == std::string::npos ? path : path.substr(0, next);
    const htri_t exists = H5Lexists(file, prefix.c_str(), H5P_DEFAULT);
    check(exists, "cannot look up " + prefix);
    if (exists == 0) return false;
    if (next == std::string::npos) return true;
    next = path.find('/', next + 1);
  }
}

namespace {

struct VisitState {
  std::vector<std::string> names;
  std::vector<std::string> soft_links;  // soft and external: a checkpoint holds none
};

herr_t collect_name(hid_t, const char* name, const H5L_info_t* info, void* data) {
  auto* state = static_cast<VisitState*>(data);
  (info->type == H5L_TYPE_HARD ? state->names : state->soft_links).emplace_back(name);
  return 0;
}

// A corrupted file can link a group into itself or its ancestors: the walk remembers each
// group's address so that it ends, instead of descending 64 levels at every fan-out.
void visit_group(hid_t file, const std::string& group_path,
                 const std::function<void(const std::string&, hid_t)>& visit, int depth,
                 std::set<haddr_t>& groups_seen) {
  if (depth > 64) throw Hdf5Error("groups nested too deeply at " + group_path);
  Handle group = own(H5Gopen2(file, group_path.c_str(), H5P_DEFAULT), H5Gclose,
                     "cannot open group " + group_path);
  H5_index_t index = H5_INDEX_NAME;
  {
    Handle plist = own(H5Gget_create_plist(group.get()), H5Pclose, "cannot inspect group " + group_path);
    unsigned flags = 0;
    if (H5Pget_link_creation_order(plist.get(), &flags) >= 0 && (flags & H5P_CRT_ORDER_INDEXED))
      index = H5_INDEX_CRT_ORDER;
  }
  VisitState state;
  hsize_t position = 0;
  check(H5Literate(group.get(), index, H5_ITER_INC, &position, collect_name, &state),
        "cannot list group " + group_path);
  if (!state.soft_links.empty())
    throw Hdf5Error("soft or external link " + (group_path == "/" ? "" : group_path) + "/" +
                    state.soft_links.front());
  for (const std::string& name : state.names) {
    const std::string path = (group_path == "/" ? "" : group_path) + "/" + name;
    Handle object = own(H5Oopen(file, path.c_str(), H5P_DEFAULT), H5Oclose, "cannot open " + path);
    const H5I_type_t type = H5Iget_type(object.get());
    if (type == H5I_GROUP) {
      H5O_info_t info{};
      check(H5Oget_info2(object.get(), &info, H5O_INFO_BASIC), "cannot inspect " + path);
      if (!groups_seen.insert(info.addr).second)
        throw Hdf5Error("group " + path + " is linked more than once (a cycle?)");
      visit_group(file, path, visit, depth + 1, groups_seen);
    }
    else if (type == H5I_DATASET)
      visit(path, object.get());
  }
}

}  // namespace

void visit_datasets(hid_t file, const std::string& group,
                    const std::function<void(const std::string& path, hid_t dataset)>& visit) {
  std::set<haddr_t> groups_seen;
  visit_group(file, group, visit, 0, groups_seen);
}

}  // namespace sy::h5
