// Purpose: `nnkit check-plugin (LIB | KIND/NAME)`: loads one plugin and runs the conformance
// checks of nnkit/testing.h on it, printing a table (or JSON) of check, result, measured error
// and tolerance; exit 0 when every check passed, 1 when one failed or the library was refused.
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/testing.h"

namespace nnkit::cli {

namespace fs = std::filesystem;

namespace {

CommandSpec check_plugin_spec() {
  return CommandSpec{
      "check-plugin",
      "nnkit check-plugin (LIB | KIND/NAME) [--options YAML] [--backend cpu|cuda] [--json]",
      "Runs the conformance checks of a plugin's kind (gradients against finite differences, "
      "accumulation, shapes, determinism, KV cache, optimizer and sampler checks, backend ops) "
      "and prints one row per check.",
      {{"--options", "YAML", "the plugin's options: a YAML file or inline '{top_k: 2}'"},
       {"--backend", "cpu|cuda", "backend the layers run on (cuda: also compared with cpu)"},
       {"--json", "", "print the report as JSON"}},
      "LIB is a plugin library file; KIND/NAME a plugin in the search path"};
}

std::shared_ptr<Backend> make_backend(const Registry& registry, const std::string& name,
                                      const std::map<std::string, std::string>& values) {
  const PluginInfo& info = registry.require("backend", name, "--backend");
  return registry.create<Backend>("backend", name,
                                  CreateArgs{testing::make_options(info, values), {}, nullptr});
}

void print_json(const testing::CheckReport& report, const std::string& error) {
  nlohmann::json rows = nlohmann::json::array();
  for (const testing::CheckResult& r : report.results) {
    rows.push_back({{"check", r.check},
                    {"result", r.skipped ? "skip" : (r.passed ? "pass" : "fail")},
                    {"error", std::isfinite(r.error) ? nlohmann::json(r.error) : nlohmann::json()},
                    {"tolerance", r.tolerance},
                    {"detail", r.detail}});
  }
  nlohmann::json out = {{"plugin", report.plugin},
                        {"library", report.library},
                        {"passed", error.empty() && report.passed()},
                        {"checks", rows}};
  if (!report.role.empty()) out["role"] = report.role;
  if (!error.empty()) out["error"] = error;
  std::cout << out.dump(2) << "\n";
}

}  // namespace

int run_check_plugin(const Args& raw) {
  const std::optional<ParsedArgs> parsed = parse_command(check_plugin_spec(), raw);
  if (!parsed) return 0;
  const ParsedArgs& args = *parsed;
  if (args.positionals().size() != 1) {
    throw UsageError("cli", "check-plugin takes one LIB or KIND/NAME; see --help");
  }
  const std::string target = args.positionals()[0];
  const std::string backend_name = args.get_or("--backend", "cpu");
  if (backend_name != "cpu" && backend_name != "cuda") {
    throw UsageError("cli", "--backend must be cpu or cuda, got '" + backend_name + "'");
  }
  testing::CheckOptions options;
  if (auto text = args.get("--options")) options.options = testing::parse_option_values(*text);
  std::vector<fs::path> explicit_paths = apply_common_flags(args);
  const bool json = args.has("--json");

  std::error_code ec;
  const bool is_library =
      fs::is_regular_file(target, ec) || target.find(".so") != std::string::npos;
  std::string kind, name;
  RegistryOptions registry_opts = registry_options(args);
  if (is_library) {
    // Load the file alone first: a refusal (no entry symbol, wrong ABI or build tag, a bad
    // name) is the answer, naming the file and the reason.
    const fs::path lib = fs::absolute(target);
    const Registry alone({lib}, registry_opts);
    if (alone.plugins().empty()) {
      std::string reason = fs::exists(lib, ec) ? "it was not loaded" : "the file does not exist";
      for (const RejectedLibrary& r : alone.rejected()) reason = r.reason;
      testing::CheckReport report;
      report.library = lib.string();
      if (json) {
        print_json(report, reason);
      } else {
        std::cout << "FAIL " << lib.string() << ": " << reason << "\n";
      }
      return 1;
    }
    kind = alone.plugins()[0].kind;
    name = alone.plugins()[0].name;
    registry_opts.prefer[kind + "/" + name] = lib;  // this file, even if another provides it
    explicit_paths.insert(explicit_paths.begin(), lib);
  } else {
    const size_t slash = target.find('/');
    if (slash == std::string::npos) {
      throw UsageError("cli", "'" + target + "' is neither a library file nor KIND/NAME");
    }
    kind = target.substr(0, slash);
    name = target.substr(slash + 1);
  }
  const Registry registry(Registry::default_search_paths(explicit_paths), registry_opts);
  std::shared_ptr<Backend> backend = make_backend(registry, backend_name, {});
  std::shared_ptr<Backend> reference;
  if (backend_name != "cpu") reference = make_backend(registry, "cpu", {});
  const testing::CheckReport report =
      testing::check_plugin(registry, kind, name, options, *backend, reference.get());
  if (json) {
    print_json(report, "");
  } else {
    std::cout << report.plugin << " from " << report.library
              << (report.role.empty() ? "" : " (" + report.role + ")") << " on "
              << to_string(backend->device()) << "\n\n"
              << report.table() << "\n"
              << (report.passed() ? "PASS" : "FAIL") << ": " << report.plugin << "\n";
  }
  return report.passed() ? 0 : 1;
}

}  // namespace nnkit::cli
