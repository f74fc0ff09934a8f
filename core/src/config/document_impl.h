// Purpose: the private side of ConfigDocument, shared by document.cpp and resolve.cpp: the
// yaml-cpp tree and the origin of values that came from the command line.
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <string>

#include "nnkit/config.h"

namespace nnkit {

struct ConfigDocument::Impl {
  YAML::Node root;
  // The document as parsed, before any override: what the file itself chose (a deep copy, so
  // overrides leave it alone). Resolution compares the two to notice a backend switched from the
  // command line.
  YAML::Node file_root;
  std::string source_name;         // file path or "<string>"
  std::filesystem::path base_dir;  // for relative plugin paths
  // dotted path -> "command-line override 'a.b=1' (argument 3)", for the overrides whose values
  // are still in the document (a later override of a mapping above replaces earlier ones).
  std::map<std::string, std::string> override_origin;

  // The override that set the value at dotted `path` (or a mapping above it), or nullptr when
  // the value came from the file. Reverse order finds the longest matching key first.
  const std::string* override_for(const std::string& path) const {
    for (auto it = override_origin.rbegin(); it != override_origin.rend(); ++it) {
      const std::string& key = it->first;
      if (path == key || path.rfind(key + ".", 0) == 0 || path.rfind(key + "[", 0) == 0) {
        return &it->second;
      }
    }
    return nullptr;
  }

  // Where the node at dotted `path` came from.
  SourceLocation location(const YAML::Node& node, const std::string& path) const {
    if (const std::string* origin = override_for(path)) return SourceLocation{*origin, 0, 0};
    if (!node.IsDefined()) return SourceLocation{source_name, 0, 0};  // an absent key
    const YAML::Mark mark = node.Mark();
    if (mark.line < 0) return SourceLocation{source_name, 0, 0};
    return SourceLocation{source_name, mark.line + 1, mark.column + 1};
  }
};

}  // namespace nnkit
