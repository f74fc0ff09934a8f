// Purpose: the private side of ConfigDocument, shared by document.cpp and resolve.cpp: the
// composed yaml-cpp tree (files and includes, then command-line overrides), where every value
// came from, and the same tree with its ${...} references resolved, which is what resolution
// reads. Thread-safety: none; the resolved tree is computed on first use after a change.
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <string>

#include "config/origins.h"
#include "nnkit/config.h"

namespace nnkit {

struct ConfigDocument::Impl {
  // ---- as written: the files (includes merged) and the overrides, ${...} unresolved
  YAML::Node written_root;
  config::OriginTable written_origins;
  // The composed files before any override, as a deep copy (overrides change written_root in
  // place). Only values are read from it: yaml-cpp's copy loses positions.
  YAML::Node written_file_root;
  config::OriginTable file_origins;

  // ---- resolved (by resolve_references(), on first use after a change)
  bool resolved = false;
  // What resolution reads: references replaced, vars: dropped.
  YAML::Node root;
  // The resolved tree with vars: kept, for show-origin to follow references into it.
  YAML::Node root_with_variables;
  config::OriginTable origins;
  // What the files themselves chose (before any override), references resolved. Resolution
  // compares it with `root` to notice a backend switched from the command line.
  YAML::Node file_root;

  std::string source_name;         // file path or "<string>"
  std::filesystem::path base_dir;  // the top file's folder, for relative plugin paths

  // Resolves references when the written tree changed since the last time.
  void resolve();

  // The override that set the value at dotted `path` (or a mapping above it), or nullptr when
  // the value came from a file.
  const std::string* override_for(const std::string& path) const {
    const config::ValueSource& source = origins.source_for(path);
    return source.from_override ? &source.name : nullptr;
  }

  // Where the node at dotted `path` came from.
  SourceLocation location(const YAML::Node& node, const std::string& path) const {
    if (!node.IsDefined() && override_for(path) == nullptr) {
      return SourceLocation{source_name, 0, 0};  // an absent key
    }
    return origins.locate(node, path, source_name);
  }

  // The folder a relative path in the value at `path` is relative to: that of the file that set
  // it; for a value from the command line or from text, the top file's folder.
  std::filesystem::path folder_for(const std::string& path) const;
};

}  // namespace nnkit
