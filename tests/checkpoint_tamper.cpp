// checkpoint_tamper: damages a checkpoint for tests/cli_checkpoint.sh (no HDF5 command-line tools
// are needed on the machine).
//   checkpoint_tamper FILE delete PATH           remove a tensor
//   checkpoint_tamper FILE reshape PATH D0,D1..  replace a tensor by one of another shape
//   checkpoint_tamper FILE set-version N         overwrite the format_version attribute
//   checkpoint_tamper FILE corrupt PATH          flip bytes inside a tensor's first chunk
//   checkpoint_tamper FILE corrupt-header PATH   flip a byte inside an object's header
#include <cstdio>
#include <sstream>
#include <string>

#include "checkpoint_tamper.h"

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr,
                 "usage: checkpoint_tamper FILE delete|reshape|set-version|corrupt|corrupt-header "
                 "ARGS\n");
    return 2;
  }
  const std::string file = argv[1], action = argv[2], arg = argv[3];
  try {
    if (action == "delete") {
      sy::tamper::delete_tensor(file, arg);
    } else if (action == "reshape" && argc == 5) {
      std::vector<hsize_t> shape;
      std::stringstream dims(argv[4]);
      for (std::string dim; std::getline(dims, dim, ',');) shape.push_back(std::stoull(dim));
      sy::tamper::reshape_tensor(file, arg, shape);
    } else if (action == "set-version") {
      sy::tamper::set_int_attribute(file, "format_version", std::stoll(arg));
    } else if (action == "corrupt") {
      sy::tamper::corrupt_tensor(file, arg);
    } else if (action == "corrupt-header") {
      sy::tamper::corrupt_header(file, arg);
    } else {
      std::fprintf(stderr, "checkpoint_tamper: unknown action %s\n", action.c_str());
      return 2;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "checkpoint_tamper: %s\n", error.what());
    return 1;
  }
  return 0;
}
