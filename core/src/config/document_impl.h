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
  std::string source_name;                           // file path or "<string>"
  std::filesystem::path base_dir;                    // for relative plugin paths
  std::map<std::string, std::string> override_text;  // dotted path -> "a.b=1"

  // Where the node at dotted `path` came from.
  SourceLocation location(const YAML::Node& node, const std::string& path) const {
    for (auto it = override_text.rbegin(); it != override_text.rend(); ++it) {
      const std::string& key = it->first;
      if (path == key || path.rfind(key + ".", 0) == 0 || path.rfind(key + "[", 0) == 0) {
        return SourceLocation{"command-line override '" + it->second + "'", 0, 0};
      }
    }
    if (!node.IsDefined()) return SourceLocation{source_name, 0, 0};  // an absent key
    const YAML::Mark mark = node.Mark();
    if (mark.line < 0) return SourceLocation{source_name, 0, 0};
    return SourceLocation{source_name, mark.line + 1, mark.column + 1};
  }
};

}  // namespace nnkit
