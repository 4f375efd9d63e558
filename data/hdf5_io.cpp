#include "data/hdf5_io.h"

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
};

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<VisitState*>(data)->names.emplace_back(name);
  return 0;
}

void visit_group(hid_t file, const std::string& group_path,
                 const std::function<void(const std::string&, hid_t)>& visit, int depth) {
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
  for (const std::string& name : state.names) {
    const std::string path = (group_path == "/" ? "" : group_path) + "/" + name;
    Handle object = own(H5Oopen(file, path.c_str(), H5P_DEFAULT), H5Oclose, "cannot open " + path);
    const H5I_type_t type = H5Iget_type(object.get());
    if (type == H5I_GROUP)
      visit_group(file, path, visit, depth + 1);
    else if (type == H5I_DATASET)
      visit(path, object.get());
  }
}

}  // namespace

void visit_datasets(hid_t file, const std::string& group,
                    const std::function<void(const std::string& path, hid_t dataset)>& visit) {
  visit_group(file, group, visit, 0);
}

}  // namespace sy::h5
