// Purpose: where each value of a composed configuration came from. A document put together from
// several files (include:), command-line overrides and ${...} references cannot rely on yaml-cpp
// marks alone: a mark holds a line and a column but no file name, and nodes nnkit builds (merged
// mappings, interpolated strings) have no mark at all. OriginTable maps dotted paths
// ("model.attention.n_heads", "decode[0].k") to the file or override that set the value there;
// an entry covers everything below its path that has no entry of its own, so a document from one
// file needs a single entry. Thread-safety: none (a value type owned by one document).
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <string>
#include <vector>

#include "nnkit/options.h"

namespace nnkit::config {

// A file (by the name messages use) or a command-line override ("command-line override
// 'model.n_layers=2' (argument 3)").
struct ValueSource {
  std::string name;
  bool from_override = false;
};

// A value that a ${...} reference put at a path, for `nnkit validate --show-origin`.
struct ReferenceUse {
  std::string text;                  // the scalar as written: "${vars.dim}" or "${vars.dir}/x"
  std::vector<std::string> targets;  // the dotted paths it names, in order
  bool whole = false;                // the scalar was one reference (the value is the target's)
  SourceLocation at;                 // where the scalar is
};

// True when dotted `path` is `prefix` or lies below it ("a.b" and "a[0]" lie below "a"; every
// path lies below "").
bool is_at_or_below(const std::string& path, const std::string& prefix);

class OriginTable {
 public:
  OriginTable() = default;
  // A document that comes from one source.
  explicit OriginTable(const ValueSource& whole_document) { sources_[""] = whole_document; }

  // The source of the value at `path`: its own entry or the nearest one above it (an empty
  // name when the table is empty).
  const ValueSource& source_for(const std::string& path) const;
  // Where the node at `path` is: an override's label (no line), the file with the node's mark,
  // or, for a node nnkit built, the position recorded with set_position.
  SourceLocation locate(const YAML::Node& node, const std::string& path,
                        const std::string& fallback_name) const;

  // `path` and everything below it now come from `source`; entries below are dropped.
  void assign(const std::string& path, const ValueSource& source);
  // Gives `path` an entry of its own without touching entries below, so that a later entry
  // above does not take it over.
  void pin(const std::string& path, const ValueSource& source);
  // A node built by nnkit has no yaml-cpp mark; this is where it should be reported.
  void set_position(const std::string& path, const SourceLocation& where);
  void set_reference(const std::string& path, ReferenceUse use);
  // The reference use nearest above (or at) `path`, with the path it was recorded at; nullptr
  // when the value at `path` was reached through no reference.
  const ReferenceUse* reference_above(const std::string& path, std::string* at_path) const;
  // Replaces what this table says at and below `to` with what `from` says at and below
  // `from_path` (re-rooted under `to`). `from` may be this table.
  void graft(const OriginTable& from, const std::string& from_path, const std::string& to);
  // Entries in all; a bound on what references may copy.
  size_t size() const { return sources_.size() + positions_.size() + references_.size(); }

 private:
  std::map<std::string, ValueSource> sources_;
  std::map<std::string, SourceLocation> positions_;
  std::map<std::string, ReferenceUse> references_;
};

}  // namespace nnkit::config
