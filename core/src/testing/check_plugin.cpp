// Purpose: `check_plugin`, the entry of nnkit/testing.h that `nnkit check-plugin` runs: the
// descriptor's checks, then the conformance checks of the plugin's kind (layer_checks.cpp,
// component_checks.cpp, backend_checks.cpp).
#include <cmath>

#include "nnkit/backend.h"
#include "nnkit/error.h"
#include "nnkit/version.h"
#include "testing/harness.h"

namespace nnkit::testing {

namespace {

const std::vector<std::string>& known_kinds() {
  static const std::vector<std::string> kinds = {
      "backend", "norm",      "attention",         "moe", "ffn", "optim", "schedule",
      "decode",  "tokenizer", "tokenizer_trainer", "comm"};  // comm: parallel.comm
  return kinds;
}

}  // namespace

std::vector<CheckResult> check_descriptor(const Registry& registry, const PluginInfo& info,
                                          const CheckOptions& options) {
  std::vector<CheckResult> rows;
  // The registry refuses a wrong ABI or build tag before anything else; being here means both
  // matched.
  rows.push_back(
      detail::pass_row("ABI version and build tag",
                       "ABI " + std::to_string(kPluginAbiVersion) + ", " + NNKIT_BUILD_TAG));
  const bool known =
      std::find(known_kinds().begin(), known_kinds().end(), info.kind) != known_kinds().end();
  rows.push_back(
      known ? detail::pass_row("kind is known", info.kind)
            : detail::fail_row("kind is known", "no config slot takes kind '" + info.kind + "'"));
  std::string problems;
  for (const OptionSpec& spec : info.options) {
    if (const std::string p = declared_default_problem(spec); !p.empty()) {
      problems += (problems.empty() ? "" : "; ") + spec.name + ": " + p;
    }
  }
  rows.push_back(problems.empty()
                     ? detail::pass_row("declared defaults inside their ranges",
                                        std::to_string(info.options.size()) + " options")
                     : detail::fail_row("declared defaults inside their ranges", problems));
  // Each numeric option at the ends of its declared range: the factory may refuse a value, but
  // only with an nnkit::Error (a message for the user), never with anything else.
  if (info.kind != "backend") {
    std::string bad;
    size_t tried = 0;
    for (const OptionSpec& spec : info.options) {
      if (spec.type != OptionType::kInt && spec.type != OptionType::kFloat) continue;
      for (const std::optional<double>& bound : {spec.min, spec.max}) {
        if (!bound) continue;
        std::map<std::string, std::string> values = options.options;
        values[spec.name] = spec.type == OptionType::kInt
                                ? std::to_string(static_cast<int64_t>(std::ceil(*bound)))
                                : std::to_string(*bound);
        ++tried;
        try {
          const Options o = make_options(info, values);
          registry.create<Component>(info.kind, info.name, CreateArgs{o, options.dims, nullptr});
        } catch (const Error&) {
          // refused cleanly
        } catch (const std::exception& e) {
          bad += spec.name + "=" + values[spec.name] + " threw " + e.what() + "; ";
        }
      }
    }
    rows.push_back(bad.empty()
                       ? detail::pass_row("options at their bounds",
                                          std::to_string(tried) + " values: built, or refused with "
                                                                  "nnkit::Error")
                       : detail::fail_row("options at their bounds", bad));
  }
  return rows;
}

CheckReport check_plugin(const Registry& registry, const std::string& kind, const std::string& name,
                         const CheckOptions& options, Backend& backend, Backend* reference) {
  const PluginInfo& info = registry.require(kind, name);
  CheckReport report;
  report.plugin = info.id();
  report.library = info.path;
  report.role = registry.role_of(info);
  report.results = check_descriptor(registry, info, options);
  auto append = [&](std::vector<CheckResult> rows) {
    for (CheckResult& r : rows) report.results.push_back(std::move(r));
  };
  try {
    if (kind == "norm" || kind == "attention" || kind == "ffn") {
      append(check_layer(registry, info, options, backend, reference));
    } else if (kind == "moe" && report.role == "router") {
      append(check_router(registry, info, options, backend, reference));
    } else if (kind == "moe" && report.role == "experts") {
      append(check_experts(registry, info, options, backend, reference));
    } else if (kind == "moe") {
      report.results.push_back(detail::fail_row(
          "moe role",
          "could not tell router from experts: the plugin cannot be created from its "
          "defaults (give required options with --options)"));
    } else if (kind == "optim") {
      append(check_optimizer(registry, info, options, backend));
    } else if (kind == "decode") {
      append(check_sampler(registry, info, options, &backend));
    } else if (kind == "tokenizer") {
      append(check_tokenizer(registry, info, options));
    } else if (kind == "schedule") {
      append(check_schedule(registry, info, options));
    } else if (kind == "comm") {
      append(check_communicator(registry, info, options, backend));
    } else if (kind == "backend") {
      std::shared_ptr<Backend> created;
      const bool ok = detail::guarded(report.results, "created", [&] {
        std::map<std::string, std::string> values = options.options;
        created = registry.create<Backend>(kind, name,
                                           CreateArgs{make_options(info, values), {}, nullptr});
      });
      if (ok) append(check_backend_ops(*created));
    } else {
      report.results.push_back(detail::skip_row("conformance", "no checks for kind " + kind));
    }
  } catch (const Error& e) {
    // Options the kit could not build (a required option not given): one row, not a crash.
    report.results.push_back(detail::fail_row("options", e.what()));
  }
  return report;
}

}  // namespace nnkit::testing
