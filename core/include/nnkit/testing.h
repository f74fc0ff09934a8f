// Purpose: the plugin conformance kit, installed with the SDK so that an outside author can run
// the same checks as `nnkit check-plugin` from their own test suite (GoogleTest or anything
// else): the finite-difference helpers the in-tree layer tests use, and one conformance run per
// plugin kind that returns a table of (check, passed, measured error, tolerance, detail).
// Nothing here depends on a test framework; a failed check is a row, never an abort.
// Ownership: checks create their components through the Registry given and drop them before
// returning; tensors they allocate live on the backend given and are released on return.
// Thread-safety: one check at a time per backend (backends are single-threaded).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/export.h"
#include "nnkit/options.h"
#include "nnkit/registry.h"

namespace nnkit::testing {

// ---- numerics shared with the in-tree tests -----------------------------------------------
// d(objective)/d(values[i]) by central differences for every i; `values` is perturbed in place
// and restored.
NNKIT_API std::vector<double> numeric_gradient(std::vector<double>& values,
                                               const std::function<double()>& objective,
                                               double eps = 1e-5);
// The same for the listed indices only (the others are not touched); result parallel to
// `indices`.
NNKIT_API std::vector<double> numeric_gradient_at(std::vector<double>& values,
                                                  const std::vector<size_t>& indices,
                                                  const std::function<double()>& objective,
                                                  double eps);
// Up to `count` indices spread evenly over [0, n) (all of them when n <= count).
NNKIT_API std::vector<size_t> spread_indices(size_t n, size_t count);

// max |actual - expected| against abs_tol + rel_tol * max|expected| (the rule of every check).
struct Comparison {
  double max_abs_diff = 0.0;
  double max_expected = 0.0;
  double tolerance = 0.0;
  size_t worst = 0;  // index of the largest difference
  bool ok = true;    // also false when a value is not finite or the sizes differ
};
NNKIT_API Comparison compare(const std::vector<double>& actual, const std::vector<double>& expected,
                             double abs_tol, double rel_tol);

// ---- conformance checks --------------------------------------------------------------------
struct CheckResult {
  std::string check;    // "gradient dx (finite differences)"
  bool passed = false;  // false with skipped = true: not run (detail says why)
  bool skipped = false;
  double error = 0.0;      // what was measured (max |diff| unless detail says otherwise)
  double tolerance = 0.0;  // what it was held to (0 for yes/no checks)
  std::string detail;
};

struct CheckReport {
  std::string plugin;   // "kind/name"
  std::string library;  // absolute path
  std::string role;     // "router" / "experts" for moe plugins
  std::vector<CheckResult> results;
  // True when no check failed (skipped ones do not fail the report).
  NNKIT_API bool passed() const;
  // Fixed-width table: check, result, error, tolerance, detail.
  NNKIT_API std::string table() const;
};

struct CheckOptions {
  // The plugin's options as YAML scalar text by dotted name, overriding its declared defaults
  // (required options must be given here).
  std::map<std::string, std::string> options;
  // Sizes of the model the plugin is built for.
  ModelDims dims{64, 16, 2, 16, 0, 4};
  int64_t batch = 2;  // B sequences of
  int64_t seq = 3;    // T tokens for layer checks
  uint64_t seed = 1;
  size_t fd_elements = 24;  // finite-difference points per tensor
  double fd_step = 1e-3;    // small: a router's top-k must not flip (flips are masked anyway)
  // Backend options (YAML scalar text) for the backend the layers run on.
  std::map<std::string, std::string> backend_options;
};

// Builds Options for `info` from its declared defaults and `values` (validated like the config:
// types, declared ranges, unknown names). Throws ConfigError.
NNKIT_API Options make_options(const PluginInfo& info,
                               const std::map<std::string, std::string>& values);
// Flattens a YAML mapping (a file path or inline text such as "{top_k: 2, rope: {base: 1e4}}")
// into dotted names -> scalar text. Throws ConfigError.
NNKIT_API std::map<std::string, std::string> parse_option_values(const std::string& yaml);

// Everything `nnkit check-plugin KIND/NAME` runs: the descriptor checks, then the checks of the
// plugin's kind on `backend` (layers, routers, experts, optimizers, backends' ops), and, when
// `reference` is given (the CPU backend while `backend` is CUDA), agreement between the two.
// Never throws for a plugin's failure (it becomes a row); throws for a kind/name the registry
// does not have.
NNKIT_API CheckReport check_plugin(const Registry& registry, const std::string& kind,
                                   const std::string& name, const CheckOptions& options,
                                   Backend& backend, Backend* reference = nullptr);

// The pieces, for authors who want only some rows.
NNKIT_API std::vector<CheckResult> check_descriptor(const Registry& registry,
                                                    const PluginInfo& info,
                                                    const CheckOptions& options);
NNKIT_API std::vector<CheckResult> check_layer(const Registry& registry, const PluginInfo& info,
                                               const CheckOptions& options, Backend& backend,
                                               Backend* reference);
NNKIT_API std::vector<CheckResult> check_router(const Registry& registry, const PluginInfo& info,
                                                const CheckOptions& options, Backend& backend,
                                                Backend* reference = nullptr);
NNKIT_API std::vector<CheckResult> check_experts(const Registry& registry, const PluginInfo& info,
                                                 const CheckOptions& options, Backend& backend,
                                                 Backend* reference = nullptr);
NNKIT_API std::vector<CheckResult> check_optimizer(const Registry& registry, const PluginInfo& info,
                                                   const CheckOptions& options, Backend& backend);
// With a backend, also compares the sampler's device path (apply_device) with apply().
NNKIT_API std::vector<CheckResult> check_sampler(const Registry& registry, const PluginInfo& info,
                                                 const CheckOptions& options,
                                                 Backend* backend = nullptr);
NNKIT_API std::vector<CheckResult> check_tokenizer(const Registry& registry, const PluginInfo& info,
                                                   const CheckOptions& options);
NNKIT_API std::vector<CheckResult> check_schedule(const Registry& registry, const PluginInfo& info,
                                                  const CheckOptions& options);
// Every op of the shared list (see backend_op_checks) on `backend` against host references.
NNKIT_API std::vector<CheckResult> check_backend_ops(Backend& backend);
// A comm/* plugin created on `backend` in this process alone (ABI 4): rank 0 of 1, every
// collective's one-rank result, and mismatched arguments refused with nnkit::ShapeError.
NNKIT_API std::vector<CheckResult> check_communicator(const Registry& registry,
                                                      const PluginInfo& info,
                                                      const CheckOptions& options,
                                                      Backend& backend);

}  // namespace nnkit::testing
