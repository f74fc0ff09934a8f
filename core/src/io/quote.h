// Purpose: how the io layer names a file in messages: 'path'. Private to core/src/io.
// Built with append rather than "'" + s + "'" because GCC 12 raises a false -Wrestrict on the
// latter at -O2 (GCC bug 105329).
#pragma once

#include <filesystem>
#include <string>

namespace nnkit::io_detail {

inline std::string quoted(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('\'');
  out.append(text);
  out.push_back('\'');
  return out;
}

inline std::string quoted(const std::filesystem::path& path) {
  return quoted(path.string());
}

}  // namespace nnkit::io_detail
