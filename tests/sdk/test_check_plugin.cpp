// `nnkit check-plugin` and nnkit/testing.h: every bundled plugin passes its kind's checks; each
// deliberately broken plugin (tests/sdk/broken) fails the one check that names its flaw; a
// library that is not loadable (no entry symbol, wrong ABI) fails with the registry's reason;
// and the CLI's exit code and table follow the report.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "nnkit/error.h"
#include "nnkit/testing.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

namespace fs = std::filesystem;

const testing::CheckResult* row(const testing::CheckReport& report, const std::string& check) {
  for (const testing::CheckResult& r : report.results) {
    if (r.check == check) return &r;
  }
  return nullptr;
}

std::string failures(const testing::CheckReport& report) {
  std::string out;
  for (const testing::CheckResult& r : report.results) {
    if (!r.passed && !r.skipped) out += r.check + ": " + r.detail + "\n";
  }
  return out;
}

testing::CheckReport check(const Registry& registry, const std::string& id,
                           std::map<std::string, std::string> values = {}) {
  static std::shared_ptr<Backend> backend = test::cpu_backend(1);
  testing::CheckOptions options;
  options.options = std::move(values);
  const size_t slash = id.find('/');
  return testing::check_plugin(registry, id.substr(0, slash), id.substr(slash + 1), options,
                               *backend);
}

TEST(CheckPlugin, EveryBundledPluginPasses) {
  const std::map<std::string, std::map<std::string, std::string>> required = {
      {"attention/mqa", {{"n_heads", "4"}, {"n_kv_heads", "2"}, {"head_dim", "4"}}},
      {"ffn/swiglu", {{"ffn_dim", "12"}}},
      {"moe/swiglu", {{"n_experts", "4"}, {"ffn_dim", "8"}}},
  };
  size_t checked = 0;
  for (const PluginInfo& info : test::registry().plugins()) {
    // Needs a trained model file; its own tests cover it (tests/hf).
    if (info.kind == "tokenizer" && info.name == "sentencepiece") continue;
    if (info.kind == "tokenizer_trainer" || info.id() == "backend/cuda") continue;
    auto it = required.find(info.id());
    const testing::CheckReport report =
        check(test::registry(), info.id(),
              it == required.end() ? std::map<std::string, std::string>{} : it->second);
    EXPECT_TRUE(report.passed()) << info.id() << "\n" << report.table();
    ++checked;
  }
  EXPECT_GE(checked, 10u);
}

// The agreement rows (CPU vs CUDA when run with --backend cuda) run here with a second CPU
// backend as the reference: every pair must agree, and the rows must be there.
TEST(CheckPlugin, AgreementRowsWithAReferenceBackend) {
  auto backend = test::cpu_backend(1);
  auto reference = test::cpu_backend(1);
  const std::map<std::string, std::map<std::string, std::string>> cases = {
      {"moe/topk", {}},
      {"moe/swiglu", {{"n_experts", "4"}, {"ffn_dim", "8"}}},
      {"norm/rmsnorm", {}}};
  for (const auto& [id, values] : cases) {
    testing::CheckOptions options;
    options.options = values;
    const size_t slash = id.find('/');
    const testing::CheckReport report =
        testing::check_plugin(test::registry(), id.substr(0, slash), id.substr(slash + 1), options,
                              *backend, reference.get());
    EXPECT_TRUE(report.passed()) << report.table();
    size_t agreement_rows = 0;
    for (const testing::CheckResult& r : report.results) {
      if (r.check.find("agree") != std::string::npos) ++agreement_rows;
    }
    EXPECT_GE(agreement_rows, 2u) << id << "\n" << report.table();
  }
}

// `nnkit check-plugin --backend cuda` for the bundled layers and the CUDA backend's op list:
// the layers run on the GPU at its default precision and every agreement row against the CPU
// must hold. Skips without a usable CUDA device (the lead's GPU runs execute it).
TEST(CheckPlugin, BundledLayersAndTheCudaBackendPassOnTheGpu) {
  std::shared_ptr<Backend> cuda;
  try {
    cuda = test::cuda_backend();
  } catch (const Error& e) {
    GTEST_SKIP() << "no CUDA device: " << e.what();
  }
  auto cpu = test::cpu_backend(1);
  const std::map<std::string, std::map<std::string, std::string>> cases = {
      {"norm/rmsnorm", {}},
      {"attention/mqa", {{"n_heads", "4"}, {"n_kv_heads", "2"}, {"head_dim", "4"}}},
      {"ffn/swiglu", {{"ffn_dim", "12"}}},
      {"moe/topk", {}},
      {"moe/swiglu", {{"n_experts", "4"}, {"ffn_dim", "8"}}},
      {"backend/cuda", {}}};
  for (const auto& [id, values] : cases) {
    testing::CheckOptions options;
    options.options = values;
    const size_t slash = id.find('/');
    const testing::CheckReport report = testing::check_plugin(
        test::registry(), id.substr(0, slash), id.substr(slash + 1), options, *cuda, cpu.get());
    EXPECT_TRUE(report.passed()) << id << "\n" << report.table();
  }
}

Registry fixture_registry(const std::string& variant) {
  return Registry(Registry::default_search_paths({fs::path(NNKIT_SDK_FIXTURES) / variant}));
}

TEST(CheckPlugin, AGradientTwiceTooLargeFailsTheDxCheck) {
  const Registry r = fixture_registry("grad_x2");
  const testing::CheckReport report = check(r, "norm/grad_x2");
  EXPECT_FALSE(report.passed());
  const testing::CheckResult* dx = row(report, "gradient dx");
  ASSERT_NE(dx, nullptr) << report.table();
  EXPECT_FALSE(dx->passed) << report.table();
  EXPECT_NE(dx->detail.find("ratio 2"), std::string::npos) << dx->detail;
  EXPECT_TRUE(row(report, "gradient weight")->passed) << report.table();  // only dx is wrong
}

TEST(CheckPlugin, AnOverwritingGradientFailsTheAccumulationCheck) {
  const Registry r = fixture_registry("overwrite");
  const testing::CheckReport report = check(r, "norm/overwrite");
  const testing::CheckResult* acc = row(report, "parameter gradients accumulate");
  ASSERT_NE(acc, nullptr) << report.table();
  EXPECT_FALSE(acc->passed) << report.table();
  EXPECT_TRUE(row(report, "gradient dx")->passed) << report.table();
}

TEST(CheckPlugin, AWrongOutputShapeIsNamed) {
  const Registry r = fixture_registry("shape");
  const testing::CheckReport report = check(r, "norm/wrong_shape");
  const testing::CheckResult* shape = row(report, "forward output shape and dtype");
  ASSERT_NE(shape, nullptr) << report.table();
  EXPECT_FALSE(shape->passed);
  EXPECT_NE(shape->detail.find("f32[6, 32]"), std::string::npos) << shape->detail;
}

TEST(CheckPlugin, ADefaultOutsideItsRangeIsNamed) {
  const Registry r = fixture_registry("default");
  const testing::CheckReport report = check(r, "norm/bad_default");
  const testing::CheckResult* defaults = row(report, "declared defaults inside their ranges");
  ASSERT_NE(defaults, nullptr);
  EXPECT_FALSE(defaults->passed);
  EXPECT_NE(defaults->detail.find("eps: default 5 is outside its own range [0, 1]"),
            std::string::npos)
      << defaults->detail;
}

TEST(CheckPlugin, AConstructorThrowing42FailsWithoutACrash) {
  const Registry r = fixture_registry("throw42");
  const testing::CheckReport report = check(r, "norm/throws_42");
  EXPECT_FALSE(report.passed());
  EXPECT_NE(failures(report).find("not a std::exception"), std::string::npos) << report.table();
  EXPECT_NE(failures(report).find("norm/throws_42"), std::string::npos) << report.table();
}

TEST(CheckPlugin, ADevicePathThatDisagreesWithTheHostPathFails) {
  const Registry r = fixture_registry("sampler");
  const testing::CheckReport report = check(r, "decode/bad_device");
  const testing::CheckResult* device = row(report, "device path equals host path");
  ASSERT_NE(device, nullptr) << report.table();
  EXPECT_FALSE(device->passed) << report.table();
  EXPECT_FALSE(device->skipped);
  EXPECT_TRUE(row(report, "reproducible")->passed) << report.table();
}

TEST(CheckPlugin, TheGoodFixturePasses) {
  const Registry r = fixture_registry("good");
  const testing::CheckReport report = check(r, "norm/good_rms");
  EXPECT_TRUE(report.passed()) << report.table();
}

// (exit code, output) of `nnkit ARGS` (any command).
std::pair<int, std::string> nnkit_command(const std::string& args) {
  const std::string command = std::string(NNKIT_CLI) + " " + args + " 2>&1";
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe) != nullptr) out += buffer.data();
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// (exit code, output) of `nnkit check-plugin ARGS`.
std::pair<int, std::string> cli(const std::string& args) {
  return nnkit_command("check-plugin " + args);
}

TEST(PluginsCli, ListsRolesAndConflicts) {
  const std::string shadow = (fs::path(NNKIT_SDK_FIXTURES) / "shadow").string();
  auto [code, out] = nnkit_command("plugins --plugin-path " + shadow);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("moe/topk (router)"), std::string::npos) << out;
  EXPECT_NE(out.find("moe/swiglu (experts)"), std::string::npos) << out;
  EXPECT_NE(out.find("CONFLICT: also provided by"), std::string::npos) << out;
  auto [json_code, json] = nnkit_command("plugins --json --plugin-path " + shadow);
  EXPECT_EQ(json_code, 0) << json;
  EXPECT_NE(json.find("\"conflicts\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"role\": \"experts\""), std::string::npos) << json;
}

TEST(CheckPluginCli, UnloadableLibrariesFailWithTheRegistrysReason) {
  const fs::path wrong_abi = fs::path(NNKIT_CORE_FIXTURES) / "libfixture_wrong_abi_plugin.so";
  const fs::path no_entry = fs::path(NNKIT_CORE_FIXTURES) / "libfixture_not_a_plugin.so";
  if (!fs::exists(wrong_abi) || !fs::exists(no_entry)) {
    GTEST_SKIP() << "the tests/core fixtures are not built (NNKIT_TEST_AREAS without core)";
  }
  auto [abi_code, abi_out] = cli(wrong_abi.string());
  EXPECT_EQ(abi_code, 1) << abi_out;
  EXPECT_NE(abi_out.find("libfixture_wrong_abi_plugin.so"), std::string::npos) << abi_out;
  EXPECT_NE(abi_out.find("built for plugin ABI version"), std::string::npos) << abi_out;

  auto [sym_code, sym_out] = cli(no_entry.string());
  EXPECT_EQ(sym_code, 1) << sym_out;
  EXPECT_NE(sym_out.find("not an nnkit plugin"), std::string::npos) << sym_out;
}

TEST(CheckPluginCli, ExitCodesAndMessagesNameThePluginAndTheProblem) {
  const fs::path fixtures(NNKIT_SDK_FIXTURES);
  auto [ok_code, ok_out] = cli((fixtures / "good" / "libbroken_good.so").string());
  EXPECT_EQ(ok_code, 0) << ok_out;
  EXPECT_NE(ok_out.find("PASS: norm/good_rms"), std::string::npos) << ok_out;

  auto [x2_code, x2_out] = cli((fixtures / "grad_x2" / "libbroken_grad_x2.so").string());
  EXPECT_EQ(x2_code, 1) << x2_out;
  EXPECT_NE(x2_out.find("FAIL: norm/grad_x2"), std::string::npos) << x2_out;

  // A library that provides a built-in's name is checked as itself, not refused as a conflict.
  auto [shadow_code, shadow_out] = cli((fixtures / "shadow" / "libbroken_shadow.so").string());
  EXPECT_EQ(shadow_code, 0) << shadow_out;
  EXPECT_NE(shadow_out.find("libbroken_shadow.so"), std::string::npos) << shadow_out;

  auto [json_code, json_out] = cli("moe/topk --json");
  EXPECT_EQ(json_code, 0) << json_out;
  EXPECT_NE(json_out.find("\"role\": \"router\""), std::string::npos) << json_out;
  EXPECT_NE(json_out.find("\"passed\": true"), std::string::npos) << json_out;

  auto [req_code, req_out] = cli("ffn/swiglu");
  EXPECT_EQ(req_code, 1) << req_out;
  EXPECT_NE(req_out.find("option 'ffn_dim' is required"), std::string::npos) << req_out;
}

}  // namespace
}  // namespace nnkit
