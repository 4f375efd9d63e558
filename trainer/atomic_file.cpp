#include "trainer/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace sy {

namespace fs = std::filesystem;

void sync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0)
    throw std::runtime_error("cannot open " + path.string() + " to sync it: " + std::strerror(errno));
  const int status = ::fsync(fd);
  const int sync_errno = errno;
  ::close(fd);
  if (status != 0 && !directory)  // some file systems refuse fsync on folders; data files must sync
    throw std::runtime_error("cannot sync " + path.string() + " to disk: " + std::strerror(sync_errno));
}

void rename_into_place(const fs::path& from, const fs::path& to) {
  std::error_code error;
  fs::rename(from, to, error);
  if (error)
    throw std::runtime_error("cannot rename " + from.string() + " to " + to.string() + ": " +
                             error.message());
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.string() + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + temporary.string() + ": " + std::strerror(errno));
  const ssize_t wrote = ::write(fd, text.data(), text.size());
  const bool written = wrote == static_cast<ssize_t>(text.size());
  // A short write without an errno is the disk filling up at the last byte.
  const int write_errno = written ? 0 : (wrote < 0 ? errno : ENOSPC);
  const bool synced = written && ::fsync(fd) == 0;
  const int sync_errno = errno;
  ::close(fd);
  if (!synced) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw std::runtime_error("cannot write " + temporary.string() + ": " +
                             std::strerror(written ? sync_errno : write_errno));
  }
  rename_into_place(temporary, path);
  sync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path(), true);
}

}  // namespace sy
