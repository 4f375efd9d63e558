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
    check_global_heaps(object, name);  // HDF5 1.10 can loop for ever on a corrupt one
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
  const size_t nul = value.find('\0');
  if (nul != std::string::npos) value.resize(nul);
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

}  // namespace

void check_global_heaps(hid_t object, const char* attribute) {
  // Reads at most this much header and this much heap: real headers are KB, our strings too.
  constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 20, kMaxHeapBytes = uint64_t{64} << 20;
  constexpr size_t kMaxRegions = 64;
  H5O_info_t info{};
  check(H5Oget_info2(object, &info, H5O_INFO_BASIC | H5O_INFO_HDR), "cannot inspect object header");
  const ssize_t name_length = H5Fget_name(object, nullptr, 0);
  if (name_length <= 0) check(-1, "cannot name the file");
  std::string path(static_cast<size_t>(name_length) + 1, '\0');
  if (H5Fget_name(object, path.data(), path.size()) < 0) check(-1, "cannot name the file");
  path.resize(static_cast<size_t>(name_length));
  hsize_t base = 0;  // addresses count from the end of a user block
  {
    Handle file = own(H5Iget_file_id(object), H5Fclose, "cannot inspect file");
    Handle plist = own(H5Fget_create_plist(file.get()), H5Pclose, "cannot inspect file");
    check(H5Pget_userblock(plist.get(), &base), "cannot inspect file");
  }
  const RawFile raw(path);
  if (!raw.valid()) return;  // HDF5 has it open; a file we cannot reopen is not ours to judge

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
