// Purpose: `${path.to.key}` references in configuration values, resolved against the whole
// document after includes and command-line overrides (so a reference follows an override of
// what it names). A value that is one reference takes the referenced node itself (a number stays
// a number, a mapping a mapping); a reference inside longer text interpolates the referenced
// scalar's text; `$${` writes a literal `${`. References may name values that are references;
// a cycle is an error. The top-level `vars:` mapping holds values to reference and is dropped
// from the result. Thread-safety: stateless functions. Ownership: returns nodes by value; nodes
// without references are shared with the input, not copied.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

#include "config/origins.h"

namespace nnkit::config {

// The top-level key whose mapping is free-form, for values that are only referenced.
inline constexpr const char* kVariablesKey = "vars";

// References followed from one value to the next, at the most (a chain this long is refused).
inline constexpr int kMaxReferenceChain = 64;

struct ResolvedDocument {
  YAML::Node root;      // every reference replaced; still holds vars:
  OriginTable origins;  // where each value came from, references recorded (ReferenceUse)
};

// Resolves every ${...} in the values of the mapping `root`, whose origins are `origins`.
// `fallback_name` names the document where a position has no file. Throws ConfigError with the
// reference's position: a reference that names nothing (with the nearest key), a malformed
// reference, a cycle (with the chain), a mapping or list interpolated into text, and a result
// nested deeper or expanding further than yaml_rules.h allows.
ResolvedDocument resolve_references(const YAML::Node& root, const OriginTable& origins,
                                    const std::string& fallback_name);

// The node at dotted `path` ("model.attention", "decode[0].k") below `root`; an undefined node
// when nothing is there. Paths are written as resolution names them; no ${...} is followed.
YAML::Node find_path(const YAML::Node& root, const std::string& path);

// `text` with every `${` written `$${`, so that a value written into a config (a run's stored
// config.yaml) reads back as the same text instead of as a reference.
std::string escape_references(const std::string& text);

// `root` without its top-level vars: mapping (shares everything else).
YAML::Node without_variables(const YAML::Node& root);

}  // namespace nnkit::config
