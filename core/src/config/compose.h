// Purpose: `include:` — a config file built from other YAML files. The included files are merged
// in order, then the including file's own keys on top; mappings merge key by key at any depth,
// scalars and lists replace. Includes nest; paths are relative to the including file's folder.
// Every file passes the YAML rules of yaml_rules.h. The result keeps, per path, the file that
// set the value (OriginTable), so that errors name the right file. Thread-safety: stateless
// functions. Ownership: returns yaml-cpp nodes and tables by value.
#pragma once

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <optional>
#include <string>

#include "config/origins.h"

namespace nnkit::config {

// Included files nested deeper than this are refused (a chain of distinct files; a cycle is
// reported as one before this is reached).
inline constexpr int kMaxIncludeDepth = 32;

struct ComposedDocument {
  YAML::Node root;  // a mapping; the include key is gone
  OriginTable origins;
};

// Parses `text` (named `source_name` in messages) and everything it includes. `file` is where
// `text` was read from: relative include paths resolve against its folder (the working directory
// when it is empty or has none), and an include of it is a cycle. Throws ConfigError: YAML
// errors with file:line:col, a top level that is not a mapping, a malformed include: value, a
// missing or unreadable included file (with the include's position), a cycle (with the chain).
ComposedDocument compose(const std::string& text, const std::string& source_name,
                         const std::filesystem::path& file);

// The bytes of a file; nullopt when it cannot be read.
std::optional<std::string> read_text_file(const std::filesystem::path& path);

}  // namespace nnkit::config
