// Purpose: `nnkit runs ls DIR | show RUN | diff A B`: reading run directories back. `ls` is one
// table row per run (status, steps, best validation loss, throughput, wall time); `show` is a
// run's whole record (run.json, plugins.json, metrics summary); `diff` lists the config values
// (from each config.yaml, defaults included) and plugin libraries that differ, and what differs
// in the record's data, build and machine, so that two runs that differ in one override show
// exactly that override's key.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/plugin_record.h"
#include "run_record.h"
#include "run_table.h"

namespace nnkit::cli {

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

RunOverview require_run(const fs::path& dir) {
  std::optional<RunOverview> run = read_run_overview(dir);
  if (!run) {
    throw IoError("runs", dir.string() +
                              " is not a run directory (it holds neither run.json nor "
                              "metrics.jsonl); pass a directory `nnkit train --out` wrote");
  }
  return *run;
}

// Every leaf of a YAML tree as "dotted.key" (lists as key[i]) -> value text.
void flatten(const YAML::Node& node, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (node.IsMap()) {
    for (const auto& item : node) {
      const std::string key = item.first.as<std::string>();
      flatten(item.second, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else if (node.IsSequence()) {
    if (node.size() == 0) out[prefix] = "[]";
    for (size_t i = 0; i < node.size(); ++i) {
      flatten(node[i], prefix + "[" + std::to_string(i) + "]", out);
    }
  } else if (node.IsNull()) {
    out[prefix] = "null";
  } else {
    out[prefix] = node.Scalar();
  }
}

void flatten_json(const Json& node, const std::string& prefix,
                  std::map<std::string, std::string>& out) {
  if (node.is_object()) {
    for (const auto& [key, value] : node.items()) {
      flatten_json(value, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else {
    out[prefix] = node.is_string() ? node.get<std::string>() : node.dump();
  }
}

std::map<std::string, std::string> resolved_config(const fs::path& run) {
  const fs::path file = run / "config.yaml";
  std::map<std::string, std::string> values;
  try {
    flatten(YAML::Load(read_file(file)), "", values);
  } catch (const YAML::Exception& e) {
    throw IoError("runs", file.string() + " is not valid YAML (" + e.what() + ")");
  }
  return values;
}

struct Difference {
  std::string key, a, b;
};

std::vector<Difference> differences(const std::map<std::string, std::string>& a,
                                    const std::map<std::string, std::string>& b) {
  std::vector<Difference> out;
  std::map<std::string, std::pair<std::string, std::string>> all;
  for (const auto& [k, v] : a) all[k].first = v;
  for (const auto& [k, v] : b) all[k].second = v;
  for (const auto& [k, values] : all) {
    const std::string va = a.count(k) ? values.first : "(absent)";
    const std::string vb = b.count(k) ? values.second : "(absent)";
    if (va != vb) out.push_back({k, va, vb});
  }
  return out;
}

// "kind/name" -> "version sha256 path" of a run's plugins.json, as comparable leaves.
std::map<std::string, std::string> plugin_leaves(const fs::path& run) {
  std::map<std::string, std::string> out;
  for (const PluginRecord& r : read_plugin_records(run)) {
    out[r.id() + ".version"] = r.version;
    out[r.id() + ".sha256"] = r.sha256;
    out[r.id() + ".path"] = r.path;
  }
  return out;
}

// The parts of run.json that say where a run came from (not how it went).
std::map<std::string, std::string> provenance_leaves(const RunOverview& run) {
  std::map<std::string, std::string> out;
  for (const char* section : {"data", "build", "machine"}) {
    if (run.record.is_object() && run.record.contains(section)) {
      flatten_json(run.record[section], section, out);
    }
  }
  out.erase("machine.omp_num_threads");  // the threads it resolved to are compared instead
  return out;
}

int runs_ls(const ParsedArgs& args) {
  if (args.positionals().size() != 2) {
    throw UsageError("cli", "`nnkit runs ls` needs one DIR (a folder of run directories)");
  }
  const fs::path dir = args.positionals()[1];
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw IoError("runs", dir.string() +
                              " is not a directory; pass the folder your runs are in "
                              "(e.g. runs/)");
  }
  std::vector<RunOverview> runs;
  if (auto self = read_run_overview(dir)) runs.push_back(*self);
  std::vector<fs::path> children;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_directory(ec)) children.push_back(entry.path());
  }
  std::sort(children.begin(), children.end());
  for (const fs::path& child : children) {
    if (auto run = read_run_overview(child)) runs.push_back(*run);
  }
  if (args.has("--json")) {
    Json rows = Json::array();
    for (const RunOverview& r : runs) rows.push_back(run_overview_json(r));
    std::cout << rows.dump(2) << "\n";
    return 0;
  }
  if (runs.empty()) {
    std::cout << "no runs in " << dir.string() << "\n";
    return 0;
  }
  TextTable table({"name", "status", "steps", "best val loss", "tokens/s", "wall time"});
  for (const RunOverview& r : runs) {
    table.add({r.name, to_string(r.status),
               std::to_string(r.last_step) + "/" +
                   (r.total_steps > 0 ? std::to_string(r.total_steps) : std::string("?")),
               format_optional(r.best_val_loss, 4, true, "-"),
               r.tokens_per_s ? group_digits(std::llround(*r.tokens_per_s)) : "-",
               format_duration_short(r.wall_s)});
  }
  std::cout << table.str();
  return 0;
}

int runs_show(const ParsedArgs& args) {
  if (args.positionals().size() != 2) throw UsageError("cli", "`nnkit runs show` needs one RUN");
  const fs::path dir = args.positionals()[1];
  const RunOverview run = require_run(dir);
  Json plugins = Json::array();
  for (const PluginRecord& r : read_plugin_records(dir)) {
    plugins.push_back({{"kind", r.kind},
                       {"name", r.name},
                       {"version", r.version},
                       {"path", r.path},
                       {"sha256", r.sha256}});
  }
  if (args.has("--json")) {
    Json out = run_overview_json(run);
    out["record"] = run.record;
    out["plugins"] = plugins;
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  const Json& r = run.record;
  std::cout << "run        " << dir.string() << "\n"
            << "status     " << to_string(run.status) << (run.error.empty() ? "" : ": " + run.error)
            << "\nsteps      " << run.last_step << "/" << run.total_steps << "\n"
            << "val loss   final " << format_optional(run.final_val_loss, 4, true, "-") << ", best "
            << format_optional(run.best_val_loss, 4, true, "-") << "\n"
            << "tokens/s   "
            << (run.tokens_per_s ? group_digits(std::llround(*run.tokens_per_s)) : "-") << "\n"
            << "wall time  " << format_duration_short(run.wall_s) << "\n"
            << "config     " << (dir / "config.yaml").string() << " (resolved; from "
            << (r.is_object() && r.contains("config") ? r["config"].dump() : "?") << ")\n"
            << "overrides  " << (run.overrides.empty() ? "(none)" : "");
  for (size_t i = 0; i < run.overrides.size(); ++i) std::cout << (i ? " " : "") << run.overrides[i];
  std::cout << "\n";
  if (r.is_object()) {
    std::cout << "seed       " << r.value("seed", Json()).dump() << "\n"
              << "parameters " << group_digits(run.params_total) << " total, "
              << group_digits(run.params_active) << " active per token\n";
    std::map<std::string, std::string> leaves;
    for (const char* section : {"build", "machine", "data"}) {
      if (r.contains(section)) flatten_json(r[section], section, leaves);
    }
    for (const auto& [key, value] : leaves) std::cout << key << ": " << value << "\n";
    for (const Json& a : r.value("attempts", Json::array())) {
      std::cout << "attempt    " << a.value("started", "") << " "
                << (a.value("resume", false) ? "resume" : "fresh") << ", ended "
                << (a["end"].is_string() ? a["end"].get<std::string>() : "(killed or running)");
      if (a.contains("last_step")) std::cout << " at step " << a["last_step"].get<int64_t>();
      std::cout << "\n";
    }
  }
  for (const Json& p : plugins) {
    std::cout << "plugin     " << p["kind"].get<std::string>() << "/"
              << p["name"].get<std::string>() << " " << p["version"].get<std::string>() << " "
              << p["path"].get<std::string>() << " sha256:" << p["sha256"].get<std::string>()
              << "\n";
  }
  return 0;
}

int runs_diff(const ParsedArgs& args) {
  if (args.positionals().size() != 3) throw UsageError("cli", "`nnkit runs diff` needs two RUNs");
  const fs::path a = args.positionals()[1], b = args.positionals()[2];
  const RunOverview run_a = require_run(a), run_b = require_run(b);
  const auto config = differences(resolved_config(a), resolved_config(b));
  const auto plugins = differences(plugin_leaves(a), plugin_leaves(b));
  const auto record = differences(provenance_leaves(run_a), provenance_leaves(run_b));
  if (args.has("--json")) {
    const auto to_json = [](const std::vector<Difference>& ds) {
      Json out = Json::array();
      for (const Difference& d : ds) out.push_back({{"key", d.key}, {"a", d.a}, {"b", d.b}});
      return out;
    };
    std::cout << Json{{"a", a.string()},
                      {"b", b.string()},
                      {"config", to_json(config)},
                      {"plugins", to_json(plugins)},
                      {"record", to_json(record)}}
                     .dump(2)
              << "\n";
    return 0;
  }
  const auto print = [](const char* what, const std::vector<Difference>& ds) {
    if (ds.empty()) {
      std::cout << what << ": same\n";
      return;
    }
    std::cout << what << ": " << ds.size() << (ds.size() == 1 ? " value differs" : " values differ")
              << "\n";
    for (const Difference& d : ds)
      std::cout << "  " << d.key << ": " << d.a << " -> " << d.b << "\n";
  };
  std::cout << "a: " << a.string() << "\nb: " << b.string() << "\n";
  print("config", config);
  print("plugins", plugins);
  print("data, build and machine", record);
  return 0;
}

}  // namespace

int run_runs(const Args& raw) {
  CommandSpec spec{"runs",
                   "nnkit runs ls DIR | runs show RUN | runs diff RUN_A RUN_B  [--json]",
                   "Lists, shows and compares training run directories.",
                   {{"--json", "", "print JSON instead of text"}},
                   "ls DIR       one row per run directory in DIR (name, status, steps, best val "
                   "loss, tokens/s, wall time)\n"
                   "show RUN     the run's record: overrides, seed, build, machine, data, plugins\n"
                   "diff A B     the config values and plugin libraries that differ"};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  apply_common_flags(args);
  const std::string action = args.positionals().empty() ? "" : args.positionals()[0];
  if (action == "ls") return runs_ls(args);
  if (action == "show") return runs_show(args);
  if (action == "diff") return runs_diff(args);
  throw UsageError("cli", (action.empty() ? std::string("`nnkit runs` needs an action")
                                          : "unknown action '" + action + "' for `nnkit runs`") +
                              "; use `nnkit runs ls DIR`, `runs show RUN` or `runs diff A B`");
}

}  // namespace nnkit::cli
