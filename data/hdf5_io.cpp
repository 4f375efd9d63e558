#include "data/hdf5_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

namespace sy::h5 {

namespace {

herr_t innermost_message(unsigned n, const H5E_error2_t* error, void* data) {
  auto* message = static_cast<std::string*>(data);
  if (n == 0 && error->desc) *message = error->desc;
  return 0;
}

}  // namespace

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

void expect_single_value(hid_t attr, const char* name) {
  Handle space = own(H5Aget_space(attr), H5Sclose, std::string("cannot inspect attribute ") + name);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw Hdf5Error(std::string("attribute ") + name + " is not a single value");
}

}  // namespace

int64_t read_int_attribute(hid_t object, const char* name) {
  Handle attr = open_attribute(object, name);
  Handle type = own(H5Aget_type(attr.get()), H5Tclose, std::string("cannot inspect attribute ") + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw Hdf5Error(std::string("attribute ") + name + " is not an integer");
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
std::string heap_walk_problem(const std::vector<uint8_t>& heap) {
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
    check(H5Oget_info2(object, &info, H5O_INFO_BASIC | H5O_INFO_HDR), "cannot inspect object header");
    Handle file = own(H5Iget_file_id(object), H5Fclose, "cannot inspect file");
    Handle plist = own(H5Fget_create_plist(file.get()), H5Pclose, "cannot inspect file");
    check(H5Pget_userblock(plist.get(), &base), "cannot inspect file");
    check(H5Pget_sizes(plist.get(), &address_bytes, &length_bytes), "cannot inspect file");
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

void check_attribute_messages(hid_t object) {
  constexpr int kAttributeMessage = 0x0C, kContinuationMessage = 0x10;
  constexpr size_t kMaxChunks = 64;
  const RawObject object_bytes(object);
  const RawFile& raw = object_bytes.raw;
  if (!raw.valid()) return;  // HDF5 has it open; a file we cannot reopen is not ours to judge
  const uint64_t base = object_bytes.base;
  // A version 1 header: version 1, reserved, message count (u16), reference count (u32), the
  // first chunk's size (u32), padding to 16; its messages follow. Version 2 headers ("OHDR")
  // carry checksums that HDF5 verifies before decoding anything: those are left to it.
  const std::vector<uint8_t> prefix = raw.read(base + object_bytes.info.addr, 16);
  if (prefix.size() < 16 || prefix[0] != 1) return;
  std::vector<std::pair<uint64_t, uint64_t>> chunks{
      {object_bytes.info.addr + 16, std::min(little_endian(&prefix[8], 4), kMaxHeaderBytes)}};
  for (size_t c = 0; c < chunks.size(); ++c) {
    const std::vector<uint8_t> chunk = raw.read(base + chunks[c].first, chunks[c].second);
    // A message: type (u16), body size (u16), flags, 3 reserved, the body.
    for (uint64_t at = 0; at + 8 <= chunk.size();) {
      const int type = static_cast<int>(little_endian(&chunk[at], 2));
      const uint64_t size = std::min<uint64_t>(little_endian(&chunk[at + 2], 2), chunk.size() - at - 8);
      const bool shared = chunk[at + 4] & 2;  // the body points at a message stored elsewhere
      const uint8_t* body = &chunk[at + 8];
      if (type == kAttributeMessage && !shared) {
        const std::string problem = attribute_message_problem(body, size, object_bytes.length_bytes);
        if (!problem.empty())
          throw Hdf5Error("damaged attribute message at byte " +
                          std::to_string(base + chunks[c].first + at) + ": " + problem);
      }
      if (type == kContinuationMessage && size >= object_bytes.address_bytes + object_bytes.length_bytes &&
          chunks.size() < kMaxChunks) {
        const int address_bytes = static_cast<int>(object_bytes.address_bytes);
        const uint64_t address = little_endian(body, address_bytes);
        const uint64_t length = little_endian(body + address_bytes, static_cast<int>(object_bytes.length_bytes));
        if (length <= kMaxHeaderBytes) chunks.emplace_back(address, length);
      }
      at += 8 + size;
    }
  }
}

void check_global_heaps(hid_t object, const char* attribute) {
  constexpr uint64_t kMaxHeapBytes = uint64_t{64} << 20;
  constexpr size_t kMaxRegions = 64;
  const RawObject object_bytes(object);
  const RawFile& raw = object_bytes.raw;
  if (!raw.valid()) return;  // HDF5 has it open; a file we cannot reopen is not ours to judge
  const H5O_info_t& info = object_bytes.info;
  const uint64_t base = object_bytes.base;

  // Every 8-byte value in the header is a candidate address: a heap ID's collection address is
  // one, and so is a continuation chunk's (address, length) pair, which is scanned in turn.
  std::vector<std::pair<uint64_t, uint64_t>> regions{
      {info.addr, std::min<uint64_t>(info.hdr.space.total + 16, kMaxHeaderBytes)}};
  std::set<uint64_t> seen_regions{info.addr}, seen_heaps;
  for (size_t r = 0; r < regions.size(); ++r) {
    const std::vector<uint8_t> header = raw.read(base + regions[r].first, regions[r].second);
    if (attribute) {
      const uint64_t claim = vlen_attribute_claim(header, attribute);
      if (claim > raw.size())
        throw Hdf5Error("its variable-length value claims " + std::to_string(claim) +
                        " bytes, more than the file's " + std::to_string(raw.size()));
    }
    for (size_t at = 0; at + 8 <= header.size(); ++at) {
      const uint64_t address = little_endian(&header[at], 8);
      if (address >= raw.size() || base + address + 16 > raw.size()) continue;
      if (info.hdr.nchunks > 1 && at + 16 <= header.size() && regions.size() < kMaxRegions) {
        const uint64_t length = little_endian(&header[at + 8], 8);
        if (length >= 8 && length <= kMaxHeaderBytes && base + address + length <= raw.size() &&
            seen_regions.insert(address).second)
          regions.emplace_back(address, length);
      }
      if (seen_heaps.count(address)) continue;
      const std::vector<uint8_t> start = raw.read(base + address, 16);
      if (start.size() < 16 || std::memcmp(start.data(), "GCOL", 4) != 0) continue;
      seen_heaps.insert(address);
      const uint64_t size = little_endian(&start[8], 8);
      // HDF5 itself refuses these without looping (a short read or a bad header).
      if (start[4] != 1 || size < 16 || size > kMaxHeapBytes || size > raw.size() ||
          base + address > raw.size() - size)
        continue;
      const std::string problem = heap_walk_problem(raw.read(base + address, size));
      if (!problem.empty())
        throw Hdf5Error("corrupt global heap collection at byte " + std::to_string(base + address) +
                        ": " + problem);
    }
  }
}

std::vector<int64_t> dataset_shape(hid_t dataset) {
  Handle space = own(H5Dget_space(dataset), H5Sclose, "cannot inspect dataset");
  const int ndims = H5Sget_simple_extent_ndims(space.get());
  if (ndims < 0) check(-1, "cannot inspect dataset");
  std::vector<hsize_t> dims(ndims);
  if (ndims > 0) check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), "cannot inspect dataset");
  return std::vector<int64_t>(dims.begin(), dims.end());
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
