// Purpose: `nnkit plugins`: what the registry found, where it looked, and what it skipped and why.
#include <iostream>
#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "common.h"

namespace nnkit::cli {

namespace {

CommandSpec plugins_spec() {
  CommandSpec spec{
      "plugins",
      "nnkit plugins [--json] [--describe KIND/NAME] [--plugin-path DIR]",
      "Lists the plugins found in the search paths (and the libraries skipped, with "
      "the reason).",
      {{"--json", "", "print a JSON array of {kind, name, version, path, summary}"},
       {"--describe", "KIND/NAME", "print one plugin's options (type, default, range)"}}};
  return spec;
}

std::string range_text(const OptionSpec& o) {
  auto num = [](double v) {
    std::string s = std::to_string(v);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  };
  // Appending (not "literal" + string) also avoids GCC 12's false -Wrestrict warning on
  // operator+(const char*, std::string&&).
  std::string text;
  if (o.min && o.max) {
    text.append("[").append(num(*o.min)).append(", ").append(num(*o.max)).append("]");
  } else if (o.min) {
    text.append(">= ").append(num(*o.min));
  } else if (o.max) {
    text.append("<= ").append(num(*o.max));
  }
  return text;
}

}  // namespace

int run_plugins(const Args& raw) {
  const std::optional<ParsedArgs> parsed = parse_command(plugins_spec(), raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  if (!args.positionals().empty()) {
    throw UsageError("cli", "`nnkit plugins` takes no positional arguments");
  }
  const Registry registry(Registry::default_search_paths(apply_common_flags(args)),
                          registry_options(args));
  if (auto id = args.get("--describe")) {
    const size_t slash = id->find('/');
    if (slash == std::string::npos) {
      throw UsageError("cli", "--describe expects KIND/NAME, e.g. attention/mqa");
    }
    const PluginInfo& info = registry.require(id->substr(0, slash), id->substr(slash + 1));
    if (args.has("--json")) {
      nlohmann::json options = nlohmann::json::array();
      for (const OptionSpec& o : info.options) {
        options.push_back({{"name", o.name},
                           {"type", option_type_name(o.type)},
                           {"default", o.default_value},
                           {"range", range_text(o)},
                           {"help", o.help}});
      }
      std::cout << nlohmann::json{{"kind", info.kind},       {"name", info.name},
                                  {"version", info.version}, {"path", info.path},
                                  {"summary", info.summary}, {"options", options}}
                       .dump(2)
                << "\n";
      return 0;
    }
    std::cout << info.id() << " " << info.version << " — " << info.summary << "\n"
              << "library: " << info.path << "\noptions:\n";
    if (info.options.empty()) std::cout << "  (none)\n";
    for (const OptionSpec& o : info.options) {
      std::cout << "  " << o.name << " (" << option_type_name(o.type) << ", default "
                << (o.default_value.empty() ? "required" : o.default_value)
                << (range_text(o).empty() ? "" : ", " + range_text(o)) << "): " << o.help << "\n";
    }
    return 0;
  }
  if (args.has("--json")) {
    nlohmann::json list = nlohmann::json::array();
    for (const PluginInfo& p : registry.plugins()) {
      nlohmann::json entry = {{"kind", p.kind},
                              {"name", p.name},
                              {"version", p.version},
                              {"path", p.path},
                              {"summary", p.summary}};
      if (const std::string role = registry.role_of(p); !role.empty()) entry["role"] = role;
      if (!p.conflicts.empty()) entry["conflicts"] = p.conflicts;
      list.push_back(std::move(entry));
    }
    std::cout << list.dump(2) << "\n";
    return 0;
  }
  std::cout << "Search paths (in order):\n";
  for (const auto& p : registry.search_paths()) std::cout << "  " << p.string() << "\n";
  std::cout << "\nPlugins:\n";
  // MoE routers and experts share the kind "moe" but fill different slots: list them apart.
  for (const PluginInfo& p : registry.plugins()) {
    const std::string role = registry.role_of(p);
    std::string id = p.id() + (role.empty() ? "" : " (" + role + ")");
    if (id.size() < 26) id.resize(26, ' ');
    std::cout << "  " << id << " " << p.version << "  " << p.summary << "\n      " << p.path
              << "\n";
    for (const std::string& other : p.conflicts) {
      std::cout << "      CONFLICT: also provided by " << other
                << " (using it is an error until plugin_prefer: chooses one)\n";
    }
  }
  if (!registry.rejected().empty()) {
    std::cout << "\nSkipped libraries:\n";
    for (const RejectedLibrary& r : registry.rejected()) {
      std::cout << "  " << r.path << "\n      " << r.reason << "\n";
    }
  }
  return 0;
}

}  // namespace nnkit::cli
