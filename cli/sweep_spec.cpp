// Purpose: see sweep_spec.h.
#include "sweep_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "nnkit/config.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"

namespace nnkit::cli {

namespace {

namespace fs = std::filesystem;

class SweepReader {
 public:
  explicit SweepReader(fs::path file) : file_(std::move(file)) {}

  std::string where(const YAML::Node& node) const {
    const YAML::Mark mark = node.Mark();
    if (mark.line < 0) return file_.string();
    return file_.string() + ":" + std::to_string(mark.line + 1) + ":" +
           std::to_string(mark.column + 1);
  }
  // The position goes after what is wrong and before the fix ("...; rename one"), as in the
  // config's own messages.
  [[noreturn]] void fail(const YAML::Node& node, const std::string& message) const {
    const size_t fix = message.find("; ");
    if (fix == std::string::npos) throw ConfigError("sweep", message + " at " + where(node));
    throw ConfigError("sweep", message.substr(0, fix) + " at " + where(node) + message.substr(fix));
  }

  SweepSpec read() {
    std::string text;
    try {
      text = read_file(file_);
    } catch (const IoError&) {
      throw ConfigError("sweep", "sweep file " + file_.string() +
                                     " does not exist or cannot be read; check the path");
    }
    YAML::Node root;
    try {
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      throw ConfigError(
          "sweep", "sweep file " + file_.string() + ":" + std::to_string(e.mark.line + 1) + ":" +
                       std::to_string(e.mark.column + 1) + " is not valid YAML: " + e.msg);
    }
    if (!root.IsMap() || !root["sweep"]) {
      throw ConfigError("sweep", "sweep file " + file_.string() +
                                     " needs a top-level 'sweep:' mapping (with base, grid "
                                     "and/or list, metric); see docs/experiments.md");
    }
    for (const auto& item : root) {
      if (item.first.as<std::string>() != "sweep") {
        fail(item.first, "unknown top-level key '" + item.first.as<std::string>() +
                             "' in a sweep file (only 'sweep:' belongs there)");
      }
    }
    const YAML::Node sweep = root["sweep"];
    if (!sweep.IsMap()) fail(sweep, "'sweep' must be a mapping with base, grid, list, metric");
    static const std::vector<std::string> kKeys = {"base", "overrides", "grid", "list", "metric"};
    for (const auto& item : sweep) {
      const std::string key = item.first.as<std::string>();
      if (std::find(kKeys.begin(), kKeys.end(), key) != kKeys.end()) continue;
      std::string best;
      size_t distance = SIZE_MAX;
      for (const std::string& k : kKeys) {
        if (edit_distance(key, k) < distance) distance = edit_distance(key, k), best = k;
      }
      fail(item.first, "unknown key '" + key + "' in sweep" +
                           (distance <= 3 ? "; did you mean '" + best + "'?"
                                          : " (expected base, overrides, grid, list or metric)"));
    }
    SweepSpec spec;
    spec.file = file_;
    spec.base = read_base(sweep);
    if (const YAML::Node metric = sweep["metric"]) {
      if (!metric.IsScalar() || (metric.Scalar() != "val_loss" && metric.Scalar() != "loss")) {
        fail(metric, "sweep.metric must be val_loss or loss");
      }
      spec.metric = metric.Scalar();
    }
    const YAML::Node grid = sweep["grid"], list = sweep["list"];
    if (!grid && !list) {
      fail(sweep, "the sweep has no runs: give sweep.grid (key: [values]) and/or sweep.list");
    }
    if (grid) read_grid(grid, spec.runs);
    if (list) read_list(list, spec.runs);
    if (const YAML::Node common = sweep["overrides"]) {
      SweepRun shared;
      read_overrides(common, "every run", shared);
      for (SweepRun& run : spec.runs) {
        run.overrides.insert(run.overrides.begin(), shared.overrides.begin(),
                             shared.overrides.end());
        run.origins.insert(run.origins.begin(), shared.origins.begin(), shared.origins.end());
        run.keys.insert(run.keys.begin(), shared.keys.begin(), shared.keys.end());
      }
    }
    return spec;
  }

 private:
  fs::path read_base(const YAML::Node& sweep) const {
    const YAML::Node base = sweep["base"];
    if (!base) fail(sweep, "sweep.base is missing; name the config every run starts from");
    if (!base.IsScalar() || base.Scalar().empty()) fail(base, "sweep.base must be a file path");
    const fs::path given = base.Scalar();
    std::error_code ec;
    if (given.is_absolute()) {
      if (fs::is_regular_file(given, ec)) return given;
      fail(base, "sweep.base " + given.string() + " does not exist; fix the path");
    }
    const fs::path beside = file_.parent_path() / given;
    if (fs::is_regular_file(beside, ec)) return beside;
    if (fs::is_regular_file(given, ec)) return given;
    fail(base, "sweep.base '" + given.string() + "' does not exist (looked for " + beside.string() +
                   " beside the sweep file and " + (fs::current_path(ec) / given).string() +
                   " from the working directory); fix "
                   "the path");
  }

  static std::string value_text(const YAML::Node& value) {
    if (value.IsScalar()) return value.Scalar();
    if (value.IsNull()) return "null";
    YAML::Emitter out;
    out << YAML::Flow << value;
    return out.c_str();
  }

  // "top_k=2" from "model.moe.router.top_k" and "2", safe as a directory name.
  static std::string name_part(const std::string& key, const std::string& value) {
    std::string part = key + "=" + value;
    for (char& c : part) {
      const bool safe = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                        c == '-' || c == '=' || c == '+';
      if (!safe) c = '_';
    }
    return part;
  }

  void read_grid(const YAML::Node& grid, std::vector<SweepRun>& runs) const {
    if (!grid.IsMap()) fail(grid, "sweep.grid must map dotted keys to lists of values");
    if (grid.size() == 0) {
      fail(grid, "sweep.grid is empty; give it at least one 'dotted.key: [values]' or remove it");
    }
    struct Axis {
      std::string key, leaf, origin;
      std::vector<std::string> values;
    };
    std::vector<Axis> axes;
    std::map<std::string, int> leaf_count;
    for (const auto& item : grid) {
      Axis axis;
      axis.key = item.first.as<std::string>();
      axis.origin = where(item.first);
      if (axis.key.empty() || axis.key.front() == '.' || axis.key.back() == '.' ||
          axis.key.find("..") != std::string::npos) {
        fail(item.first,
             "sweep.grid key '" + axis.key + "' is not a dotted key like model.n_layers");
      }
      if (!item.second.IsSequence()) {
        fail(item.second, "sweep.grid '" + axis.key + "' must be a list of values; write [" +
                              value_text(item.second) + "] for one value");
      }
      if (item.second.size() == 0) {
        fail(item.second, "sweep.grid '" + axis.key + "' has no values; give at least one");
      }
      for (const auto& v : item.second) axis.values.push_back(value_text(v));
      const size_t dot = axis.key.rfind('.');
      axis.leaf = dot == std::string::npos ? axis.key : axis.key.substr(dot + 1);
      ++leaf_count[axis.leaf];
      axes.push_back(std::move(axis));
    }
    // Every combination, the last key varying fastest (like nested loops in file order).
    std::vector<size_t> index(axes.size(), 0);
    while (true) {
      SweepRun run;
      for (size_t a = 0; a < axes.size(); ++a) {
        const Axis& axis = axes[a];
        const std::string& value = axis.values[index[a]];
        // The last key segment names the run unless two keys share it.
        const std::string& label = leaf_count[axis.leaf] > 1 ? axis.key : axis.leaf;
        run.name += (a ? "," : "") + name_part(label, value);
        run.overrides.push_back(axis.key + "=" + value);
        run.origins.push_back(axis.origin);
        run.keys.push_back(axis.key);
      }
      add_run(std::move(run), grid, runs);
      size_t a = axes.size();
      while (a > 0 && ++index[a - 1] == axes[a - 1].values.size()) index[--a] = 0;
      if (a == 0) break;
    }
  }

  void read_list(const YAML::Node& list, std::vector<SweepRun>& runs) const {
    if (!list.IsSequence()) fail(list, "sweep.list must be a list of {name, overrides} entries");
    if (list.size() == 0) fail(list, "sweep.list is empty; give it an entry or remove it");
    for (const auto& entry : list) {
      if (!entry.IsMap()) fail(entry, "a sweep.list entry must be {name: ..., overrides: [...]}");
      for (const auto& item : entry) {
        const std::string key = item.first.as<std::string>();
        if (key != "name" && key != "overrides") {
          fail(item.first, "unknown key '" + key +
                               "' in a sweep.list entry (expected name, "
                               "overrides)");
        }
      }
      const YAML::Node name = entry["name"];
      if (!name || !name.IsScalar() || name.Scalar().empty()) {
        fail(entry, "a sweep.list entry needs a name (its run directory's name)");
      }
      for (char c : name.Scalar()) {
        if (c == '/' || c == '\\' || c == '\0') {
          fail(name, "sweep.list name '" + name.Scalar() +
                         "' must not contain '/' (it names a run directory)");
        }
      }
      if (name.Scalar() == "." || name.Scalar() == "..") {
        fail(name, "sweep.list name '" + name.Scalar() + "' cannot name a run directory");
      }
      SweepRun run;
      run.name = name.Scalar();
      if (const YAML::Node overrides = entry["overrides"]) {
        read_overrides(overrides, "'" + run.name + "'", run);
      }
      add_run(std::move(run), name, runs);
    }
  }

  // A list of 'dotted.key=value' strings into run.overrides; `owner` names them in messages.
  void read_overrides(const YAML::Node& overrides, const std::string& owner, SweepRun& run) const {
    if (!overrides.IsSequence()) {
      fail(overrides, "overrides of " + owner + " must be a list of 'key=value' strings");
    }
    for (const auto& o : overrides) {
      const std::string text = o.IsScalar() ? o.Scalar() : "";
      const size_t eq = text.find('=');
      if (eq == std::string::npos || eq == 0) {
        fail(o, "override '" + value_text(o) + "' of " + owner +
                    " is not 'dotted.key=value' (quote it: 'model.moe=null')");
      }
      run.overrides.push_back(text);
      run.origins.push_back(where(o));
      run.keys.push_back(text.substr(0, eq));
    }
  }

  void add_run(SweepRun run, const YAML::Node& node, std::vector<SweepRun>& runs) const {
    for (const SweepRun& other : runs) {
      if (other.name == run.name) {
        fail(node, "two sweep runs are named '" + run.name +
                       "' (run names must be unique: they name the run directories); rename one");
      }
    }
    runs.push_back(std::move(run));
  }

  fs::path file_;
};

}  // namespace

SweepSpec load_sweep(const fs::path& file) {
  return SweepReader(file).read();
}

}  // namespace nnkit::cli
