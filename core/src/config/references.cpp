// Purpose: see references.h.
#include "config/references.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <vector>

#include "config/yaml_rules.h"
#include "nnkit/config.h"
#include "nnkit/error.h"

namespace nnkit::config {

namespace {

[[noreturn]] void refuse(const std::string& message) {
  throw ConfigError("config", message);
}

// One step of a dotted path: a mapping key, or (index >= 0) a list entry.
struct PathStep {
  std::string key;
  long index = -1;
};

std::string append_step(const std::string& path, const PathStep& step) {
  if (step.index >= 0) return path + "[" + std::to_string(step.index) + "]";
  return path.empty() ? step.key : path + "." + step.key;
}

bool is_name_char(char c) {
  return !std::isspace(static_cast<unsigned char>(c)) && c != '.' && c != '[' && c != ']' &&
         c != '{' && c != '}' && c != '$';
}

// "model.attention.n_heads", "decode[0].k"; an empty optional and `problem` when malformed.
std::optional<std::vector<PathStep>> split_path(const std::string& path, std::string& problem) {
  std::vector<PathStep> steps;
  size_t i = 0;
  while (true) {
    const size_t start = i;
    while (i < path.size() && is_name_char(path[i])) ++i;
    if (i == start) {
      problem = i == path.size() ? "it ends without a key name"
                                 : "it has no key name at '" + path.substr(i) + "'";
      return std::nullopt;
    }
    steps.push_back({path.substr(start, i - start)});
    while (i < path.size() && path[i] == '[') {
      const size_t close = path.find(']', i);
      const std::string digits =
          close == std::string::npos ? "" : path.substr(i + 1, close - i - 1);
      if (digits.empty() || digits.size() > 9 ||
          !std::all_of(digits.begin(), digits.end(),
                       [](unsigned char c) { return std::isdigit(c); })) {
        problem = "a list index is written [0], [1], ...";
        return std::nullopt;
      }
      steps.push_back({"", std::stol(digits)});
      i = close + 1;
    }
    if (i == path.size()) return steps;
    if (path[i] != '.') {
      problem = "'" + std::string(1, path[i]) + "' cannot appear in a key name";
      return std::nullopt;
    }
    ++i;
  }
}

YAML::Node nothing() {
  return YAML::Node(YAML::NodeType::Undefined);  // YAML::Node() is a defined null
}

YAML::Node child_at(const YAML::Node& node, const PathStep& step) {
  if (step.index >= 0) {
    if (!node.IsSequence() || static_cast<size_t>(step.index) >= node.size()) return nothing();
    return node[static_cast<size_t>(step.index)];
  }
  if (!node.IsMap()) return nothing();
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == step.key) return it->second;
  }
  return nothing();
}

std::string kind_of(const YAML::Node& node) {
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a list";
  if (node.IsNull()) return "null";
  return "the scalar '" + node.Scalar() + "'";
}

// A piece of a scalar's text: literal text, or the path inside a ${...}.
struct Piece {
  std::string text;
  bool is_reference = false;
};

// Splits `text` into literal text and references; `$${` is a literal `${`.
std::vector<Piece> split_text(const std::string& text, const std::string& at) {
  std::vector<Piece> pieces;
  std::string literal;
  size_t i = 0;
  while (i < text.size()) {
    if (text.compare(i, 3, "$${") == 0) {
      literal += "${";
      i += 3;
      continue;
    }
    if (text.compare(i, 2, "${") != 0) {
      literal += text[i++];
      continue;
    }
    const size_t close = text.find('}', i + 2);
    const std::string inner =
        close == std::string::npos ? text.substr(i + 2) : text.substr(i + 2, close - i - 2);
    if (close == std::string::npos) {
      refuse("unterminated reference in '" + text + "' (at " + at +
             "): close it with '}', or write $${ for a literal ${");
    }
    if (inner.find("${") != std::string::npos) {
      refuse("a reference inside a reference ('" + text + "' at " + at +
             ") is not supported; name the key directly");
    }
    if (inner.empty()) {
      refuse("empty reference ${} in '" + text + "' (at " + at +
             "); name a key, e.g. ${model.hidden_dim}");
    }
    if (!literal.empty()) pieces.push_back({literal, false});
    literal.clear();
    pieces.push_back({inner, true});
    i = close + 1;
  }
  if (!literal.empty() || pieces.empty()) pieces.push_back({literal, false});
  return pieces;
}

// The path of a scalar that is exactly one reference ("${a.b}"); nullopt otherwise.
std::optional<std::string> whole_reference(const std::string& text) {
  if (text.size() < 4 || text.compare(0, 2, "${") != 0 || text.back() != '}') return std::nullopt;
  const std::string inner = text.substr(2, text.size() - 3);
  if (inner.find_first_of("{}$") != std::string::npos) return std::nullopt;
  return inner;
}

// The key of `keys` nearest to `key`, when close enough to be the one meant.
std::optional<std::string> nearest_key(const std::string& key,
                                       const std::vector<std::string>& keys) {
  std::optional<std::string> best;
  size_t best_distance = SIZE_MAX;
  for (const std::string& candidate : keys) {
    const size_t d = edit_distance(key, candidate);
    if (d < best_distance) best_distance = d, best = candidate;
  }
  if (best && best_distance <= std::max<size_t>(2, key.size() / 3)) return best;
  return std::nullopt;
}

// A collection with the same entries as `node` (a new node, so that it can be located on its
// own); a scalar's or null's copy.
YAML::Node shallow_copy(const YAML::Node& node) {
  if (node.IsMap()) {
    YAML::Node copy(YAML::NodeType::Map);
    for (auto it = node.begin(); it != node.end(); ++it) copy.force_insert(it->first, it->second);
    return copy;
  }
  if (node.IsSequence()) {
    YAML::Node copy(YAML::NodeType::Sequence);
    for (const YAML::Node& item : node) copy.push_back(item);
    return copy;
  }
  if (node.IsNull()) return YAML::Node(YAML::NodeType::Null);
  return YAML::Node(node.Scalar());
}

// The dotted paths of the direct children of the collection `node` at `path`.
std::vector<std::string> child_paths(const YAML::Node& node, const std::string& path) {
  std::vector<std::string> paths;
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (it->first.IsScalar()) paths.push_back(append_step(path, {it->first.Scalar()}));
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      paths.push_back(append_step(path, {"", static_cast<long>(i)}));
    }
  }
  return paths;
}

class Resolver {
 public:
  Resolver(const YAML::Node& root, const OriginTable& origins, std::string fallback_name)
      : root_(root), origins_(origins), fallback_name_(std::move(fallback_name)) {}

  ResolvedDocument run() {
    YAML::Node resolved = resolve("", root_);
    long budget = kMaxExpandedValues;
    check_limits(resolved, "", 0, budget);
    return {resolved, std::move(origins_)};
  }

 private:
  // A value being resolved: `reference` (with its position) when it is a ${...} being followed.
  struct Frame {
    std::string path;
    std::string reference;
    std::string at;
  };
  struct Target {
    YAML::Node node;
    std::string path;
  };

  YAML::Node resolve(const std::string& path, const YAML::Node& node) {
    if (const auto it = done_.find(path); it != done_.end()) return it->second;
    for (size_t i = 0; i < active_.size(); ++i) {
      if (active_[i].path == path) refuse_cycle(i, path);
    }
    active_.push_back({path, "", ""});
    // Nodes are rebound with reset(): yaml-cpp's operator= would overwrite the node bound.
    YAML::Node result;
    if (node.IsScalar()) {
      result.reset(resolve_scalar(path, node));
    } else if (node.IsMap() || node.IsSequence()) {
      result.reset(resolve_collection(path, node));
    } else {
      result.reset(node);
    }
    active_.pop_back();
    done_[path] = result;
    return result;
  }

  [[noreturn]] void refuse_cycle(size_t from, const std::string& path) const {
    std::string chain;
    for (size_t i = from; i < active_.size(); ++i) {
      chain += active_[i].path;
      if (!active_[i].reference.empty()) {
        chain += " = " + active_[i].reference + " (at " + active_[i].at + ")";
      }
      chain += " -> ";
    }
    refuse("reference cycle: " + chain + path + "; replace one of these references with a value");
  }

  YAML::Node resolve_scalar(const std::string& path, const YAML::Node& node) {
    const std::string& text = node.Scalar();
    if (text.find('$') == std::string::npos) return node;
    const SourceLocation at = origins_.locate(node, path, fallback_name_);
    const std::vector<Piece> pieces = split_text(text, at.str());
    const bool has_reference =
        std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.is_reference; });
    if (!has_reference) {
      if (pieces.front().text == text) return node;
      origins_.set_position(path, at);  // only $${ escapes: the text changes, the place does not
      return YAML::Node(pieces.front().text);
    }
    int followed = 0;
    for (const Frame& f : active_) followed += f.reference.empty() ? 0 : 1;
    if (followed >= kMaxReferenceChain) {
      refuse("references nested more than " + std::to_string(kMaxReferenceChain) + " deep at " +
             text + " (at " + at.str() + "); name the value more directly");
    }
    active_.back().reference = text;
    active_.back().at = at.str();
    const ValueSource own_source = origins_.source_for(path);
    if (pieces.size() == 1) {
      const Target target = follow(pieces.front().text, text, at.str());
      YAML::Node copy = shallow_copy(target.node);
      // What the reference copies keeps the positions of the target; the copy itself is the
      // reference's value, set where the reference is.
      origins_.graft(origins_, target.path, path);
      for (const std::string& child : child_paths(copy, path)) {
        origins_.pin(child, origins_.source_for(child));
      }
      check_table_size(at.str());
      origins_.pin(path, own_source);
      origins_.set_position(path, at);
      origins_.set_reference(path, ReferenceUse{text, {target.path}, true, at});
      return copy;
    }
    std::string built;
    std::vector<std::string> targets;
    for (const Piece& piece : pieces) {
      if (!piece.is_reference) {
        built += piece.text;
        continue;
      }
      const Target target = follow(piece.text, text, at.str());
      if (!target.node.IsScalar()) {
        const std::string name = "${" + piece.text + "}";
        refuse("'" + text + "' (at " + at.str() + ") puts " + name + " into text, but " +
               target.path + " is " + kind_of(target.node) +
               (target.node.IsNull() ? "; give it a value"
                                     : "; only a scalar can go into text (write " + name +
                                           " as the whole value to use it as it is)"));
      }
      built += target.node.Scalar();
      targets.push_back(target.path);
    }
    origins_.set_position(path, at);
    origins_.set_reference(path, ReferenceUse{text, targets, false, at});
    return YAML::Node(built);
  }

  YAML::Node resolve_collection(const std::string& path, const YAML::Node& node) {
    std::vector<std::pair<YAML::Node, YAML::Node>> entries;
    bool changed = false;
    if (node.IsMap()) {
      for (auto it = node.begin(); it != node.end(); ++it) {
        YAML::Node value;
        value.reset(it->first.IsScalar()
                        ? resolve(append_step(path, {it->first.Scalar()}), it->second)
                        : it->second);
        changed = changed || !value.is(it->second);
        entries.emplace_back(it->first, value);
      }
    } else {
      for (size_t i = 0; i < node.size(); ++i) {
        const YAML::Node item = node[i];
        const YAML::Node value = resolve(append_step(path, {"", static_cast<long>(i)}), item);
        changed = changed || !value.is(item);
        entries.emplace_back(YAML::Node(), value);
      }
    }
    if (!changed) return node;
    YAML::Node rebuilt(node.IsMap() ? YAML::NodeType::Map : YAML::NodeType::Sequence);
    for (const auto& [key, value] : entries) {
      if (node.IsMap()) {
        rebuilt.force_insert(key, value);
      } else {
        rebuilt.push_back(value);
      }
    }
    origins_.set_position(path, origins_.locate(node, path, fallback_name_));
    return rebuilt;
  }

  // The resolved node that the reference path `name` (from `text` at `at`) names.
  Target follow(const std::string& name, const std::string& text, const std::string& at) {
    const std::string shown = "${" + name + "}";
    std::string problem;
    const std::optional<std::vector<PathStep>> steps = split_path(name, problem);
    if (!steps) {
      refuse("malformed reference " + shown + " in '" + text + "' (at " + at + "): " + problem +
             "; write ${section.key} or ${list[0].key}");
    }
    YAML::Node current;
    current.reset(root_);
    std::string current_path;
    bool resolved = false;  // `current` is already resolved (we went through a reference)
    for (const PathStep& step : *steps) {
      if (!resolved && current.IsScalar() && whole_reference(current.Scalar())) {
        current.reset(resolve(current_path, current));
        resolved = true;
      }
      const YAML::Node child = child_at(current, step);
      if (!child.IsDefined()) refuse_nowhere(shown, at, current_path, current, step);
      current.reset(child);
      current_path = append_step(current_path, step);
    }
    if (!resolved) current.reset(resolve(current_path, current));
    return {current, current_path};
  }

  [[noreturn]] void refuse_nowhere(const std::string& shown, const std::string& at,
                                   const std::string& path, const YAML::Node& node,
                                   const PathStep& step) const {
    const std::string where = path.empty() ? "the top level" : path;
    std::string why;
    if (step.index >= 0) {
      why = !node.IsSequence()
                ? where + " is " + kind_of(node) + ", not a list, so it has no entry [" +
                      std::to_string(step.index) + "]"
                : where + " has " + std::to_string(node.size()) + " entries, so [" +
                      std::to_string(step.index) + "] is past its end";
    } else if (node.IsSequence()) {
      why = where + " is a list; name an entry as " + where + "[0]";
    } else if (!node.IsMap()) {
      why = where + " is " + kind_of(node) + ", not a mapping, so it has no key '" + step.key + "'";
    } else {
      std::vector<std::string> keys;
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (it->first.IsScalar()) keys.push_back(it->first.Scalar());
      }
      why = where + " has no key '" + step.key + "'";
      if (const std::optional<std::string> near = nearest_key(step.key, keys)) {
        why += "; did you mean ${" + append_step(path, {*near}) + "}?";
      } else {
        if (!keys.empty()) {
          why += " (its keys:";
          for (const std::string& k : keys) why += " " + k;
          why += ")";
        }
        why +=
            "; references see what the files and overrides write, not defaults: write the "
            "value out (under " +
            std::string(kVariablesKey) + ": if it is not a setting)";
      }
    }
    refuse(shown + " (at " + at + ") points nowhere: " + why);
  }

  void check_table_size(const std::string& at) const {
    if (origins_.size() > static_cast<size_t>(kMaxExpandedValues)) {
      refuse("references expand the document to more than " + std::to_string(kMaxExpandedValues) +
             " values (references of references multiply) at " + at);
    }
  }

  void check_limits(const YAML::Node& node, const std::string& path, int depth,
                    long& budget) const {
    if (--budget < 0) {
      refuse("references expand the document to more than " + std::to_string(kMaxExpandedValues) +
             " values (references of references multiply) at " + path);
    }
    if (!node.IsMap() && !node.IsSequence()) return;
    if (depth + 1 > kMaxNestingDepth) {
      const size_t kShownPath = 80;  // a path 64 levels deep is long; its start says enough
      refuse("with its references resolved, the document nests deeper than " +
             std::to_string(kMaxNestingDepth) + " levels at " +
             (path.size() > kShownPath ? path.substr(0, kShownPath) + "..." : path) + " (at " +
             origins_.locate(node, path, fallback_name_).str() + ")");
    }
    if (node.IsSequence()) {
      for (size_t i = 0; i < node.size(); ++i) {
        check_limits(node[i], append_step(path, {"", static_cast<long>(i)}), depth + 1, budget);
      }
      return;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
      check_limits(it->second, append_step(path, {key}), depth + 1, budget);
    }
  }

  const YAML::Node root_;
  OriginTable origins_;
  const std::string fallback_name_;
  std::map<std::string, YAML::Node> done_;  // resolved values by path
  std::vector<Frame> active_;               // values being resolved, outermost first
};

}  // namespace

ResolvedDocument resolve_references(const YAML::Node& root, const OriginTable& origins,
                                    const std::string& fallback_name) {
  return Resolver(root, origins, fallback_name).run();
}

YAML::Node find_path(const YAML::Node& root, const std::string& path) {
  if (path.empty()) return root;
  std::string problem;
  const std::optional<std::vector<PathStep>> steps = split_path(path, problem);
  if (!steps) return nothing();
  YAML::Node current;
  current.reset(root);
  for (const PathStep& step : *steps) {
    current.reset(child_at(current, step));
    if (!current.IsDefined()) break;
  }
  return current;
}

std::string escape_references(const std::string& text) {
  std::string escaped;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text.compare(i, 2, "${") == 0) escaped += '$';
    escaped += text[i];
  }
  return escaped;
}

YAML::Node without_variables(const YAML::Node& root) {
  if (!root.IsMap() || !root[kVariablesKey].IsDefined()) return root;
  YAML::Node stripped(YAML::NodeType::Map);
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!(it->first.IsScalar() && it->first.Scalar() == kVariablesKey)) {
      stripped.force_insert(it->first, it->second);
    }
  }
  return stripped;
}

}  // namespace nnkit::config
