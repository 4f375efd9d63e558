// Files that appear whole or not at all, for checkpoints (docs/checkpoint.md, "Writing"): data
// reaches the disk (fsync) before the rename that publishes it, and the rename reaches the disk
// (fsync of the folder) before anything that counts on it. Errors are std::runtime_error naming
// the path and the system's reason.
#pragma once
#include <filesystem>
#include <string>

namespace sy {

// fsync of a file or folder by path. A folder that the file system refuses to fsync is let pass
// (some do); a file must sync.
void sync_path(const std::filesystem::path& path, bool directory);

// rename(2): atomic within one file system, replacing `to` if it exists.
void rename_into_place(const std::filesystem::path& from, const std::filesystem::path& to);

// Writes a small text file atomically: <path>.tmp, fsync, rename, fsync of the folder. On a
// failed write the temporary file is removed and `path` is untouched.
void write_text_atomically(const std::filesystem::path& path, const std::string& text);

}  // namespace sy
