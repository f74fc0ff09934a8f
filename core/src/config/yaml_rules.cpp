// Purpose: see yaml_rules.h.
#include "config/yaml_rules.h"

#include <yaml-cpp/depthguard.h>

#include <map>

#include "nnkit/error.h"

namespace nnkit::config {

std::string YamlSource::at(const YAML::Mark& mark) const {
  if (!is_override) {
    return name + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
  }
  return name + ", " + again(mark);
}

std::string YamlSource::again(const YAML::Mark& mark) const {
  if (!is_override) return at(mark);
  // An override value is one line almost always; count columns in the whole argument so that
  // they match what the user typed.
  if (mark.line <= 0) return "column " + std::to_string(mark.column + 1 + column_offset);
  return "line " + std::to_string(mark.line + 1) + " of the value, column " +
         std::to_string(mark.column + 1);
}

namespace {

[[noreturn]] void refuse(const std::string& message) {
  throw ConfigError("config", message);
}

std::string where_in(const std::string& path) {
  return path.empty() ? "the top level" : path;
}

std::string key_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

// A plain (unquoted) `<<` is YAML 1.1's merge key; a quoted one is an ordinary string key. yaml-cpp
// tags plain scalars "?" and quoted ones "!".
bool is_merge_key(const YAML::Node& key) {
  return key.IsScalar() && key.Scalar() == "<<" && key.Tag() != "!";
}

// `budget` counts down the values still allowed (kMaxExpandedValues in all).
void check_tree(const YAML::Node& node, const YamlSource& source, const std::string& path,
                int depth, long& budget) {
  if (--budget < 0) {
    refuse("the document expands to more than " + std::to_string(kMaxExpandedValues) +
           " values (aliases of aliases?) at " + source.at(node.Mark()));
  }
  if (!node.IsMap() && !node.IsSequence()) return;
  // Also what stops an alias that contains itself (`&a [*a]`) from recursing forever.
  if (depth + 1 > kMaxNestingDepth) {
    refuse("nesting deeper than " + std::to_string(kMaxNestingDepth) + " levels at " +
           source.at(node.Mark()));
  }
  if (node.IsSequence()) {
    size_t index = 0;
    for (const YAML::Node& item : node) {
      check_tree(item, source, path + "[" + std::to_string(index++) + "]", depth + 1, budget);
    }
    return;
  }
  std::map<std::string, YAML::Mark> first_seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    // Copies: the iterator hands out a temporary pair, and references into it dangle.
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (is_merge_key(key)) {
      refuse("merge keys (<<) are not supported at " + source.at(key.Mark()) +
             "; write the keys out");
    }
    if (!key.IsScalar()) {
      // A list or mapping as a key is never a valid nnkit key; resolution names it. Still bound
      // its depth.
      check_tree(key, source, path, depth + 1, budget);
      check_tree(value, source, path, depth + 1, budget);
      continue;
    }
    const auto [first, inserted] = first_seen.emplace(key.Scalar(), key.Mark());
    if (!inserted) {
      refuse("duplicate key '" + key.Scalar() + "' in " + where_in(path) + " at " +
             source.at(key.Mark()) + " (first at " + source.again(first->second) + "); keep one");
    }
    check_tree(value, source, key_path(path, key.Scalar()), depth + 1, budget);
  }
}

// Line `line` (0-based) of `text`, without its newline ("" past the end).
std::string line_of(const std::string& text, int line) {
  size_t start = 0;
  for (int i = 0; i < line; ++i) {
    start = text.find('\n', start);
    if (start == std::string::npos) return "";
    ++start;
  }
  return text.substr(start, text.find('\n', start) - start);
}

// The 0-based column of the first tab among the leading blanks of line `line` of `text`, or -1.
int tab_in_indentation(const std::string& text, int line) {
  const std::string content = line_of(text, line);
  for (size_t i = 0; i < content.size() && (content[i] == ' ' || content[i] == '\t'); ++i) {
    if (content[i] == '\t') return static_cast<int>(i);
  }
  return -1;
}

}  // namespace

YAML::Node load_checked(const std::string& text, const YamlSource& source, const std::string& path,
                        int depth) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp's own bound (2000 levels) reports "bad file"; say what it is.
    refuse("nesting deeper than " + std::to_string(kMaxNestingDepth) + " levels at " +
           source.at(e.mark));
  } catch (const YAML::Exception& e) {
    // yaml-cpp's what() repeats the position; use the bare message with our own position.
    if (const int column = tab_in_indentation(text, e.mark.line); column >= 0) {
      YAML::Mark tab = e.mark;
      tab.column = column;
      refuse("tab character in indentation at " + source.at(tab) +
             "; YAML indents with spaces (yaml-cpp: " + e.msg + ")");
    }
    std::string hint;
    if (line_of(text, e.mark.line).find("${") != std::string::npos) {
      // `{a: ${b}}`: inside a flow collection the braces of a plain ${...} end the mapping.
      hint = "; inside {...} and [...] write a reference in quotes: \"${model.hidden_dim}\"";
    }
    refuse("YAML syntax error at " + source.at(e.mark) + ": " + e.msg + hint);
  }
  long budget = kMaxExpandedValues;
  check_tree(root, source, path, depth, budget);
  return root;
}

}  // namespace nnkit::config
