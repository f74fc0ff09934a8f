// Purpose: the command surface: --version, --help of every command, unknown commands and flags,
// `plugins` (text and JSON, skipped libraries) and `validate` on the repository's configs.
#include <fstream>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

const char* const kCommands[] = {"plugins",  "validate", "eval", "train",
                                 "generate", "data",     "plot"};

TEST(CliBasics, VersionPrintsVersionAndPluginAbi) {
  const RunResult r = run_nnkit({"--version"});
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "nnkit ");
  EXPECT_MENTIONS(r.out, "plugin ABI");
  EXPECT_TRUE(r.out.find_first_of("0123456789") != std::string::npos) << r.out;
}

TEST(CliBasics, HelpListsEveryCommand) {
  const RunResult r = run_nnkit({"--help"});
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "Usage: nnkit COMMAND");
  for (const char* command : kCommands) EXPECT_MENTIONS(r.out, command);
  // No command at all prints the usage and is a usage error.
  const RunResult bare = run_nnkit({});
  EXPECT_EXIT_CODE(bare, 2);
  EXPECT_MENTIONS(bare.all(), "Usage: nnkit COMMAND");
}

TEST(CliBasics, EverySubcommandHasHelp) {
  for (const char* command : kCommands) {
    SCOPED_TRACE(command);
    const RunResult r = run_nnkit({command, "--help"});
    EXPECT_EXIT_CODE(r, 0);
    EXPECT_MENTIONS(r.out, std::string("Usage: nnkit ") + command);
    EXPECT_MENTIONS(r.out, "--log-level");
    EXPECT_MENTIONS(r.out, "--plugin-path");
    EXPECT_MENTIONS(r.out, "--help");
  }
}

TEST(CliBasics, UnknownCommandIsAUsageError) {
  const RunResult r = run_nnkit({"trian"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "unknown command 'trian'");
  EXPECT_MENTIONS(r.err, "nnkit --help");
}

TEST(CliBasics, UnknownFlagSuggestsTheNearestOne) {
  const RunResult r = run_nnkit({"generate", "--sed", "3"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "unknown flag '--sed'");
  EXPECT_MENTIONS(r.err, "did you mean '--seed'?");
  const RunResult v = run_nnkit({"validate", "--jsn", "x.yaml"});
  EXPECT_EXIT_CODE(v, 2);
  EXPECT_MENTIONS(v.err, "did you mean '--json'?");
}

TEST(CliBasics, PluginsJsonListsTheBuiltInPlugins) {
  const RunResult r = run_nnkit({"plugins", "--json"});
  ASSERT_EXIT_CODE(r, 0);
  const nlohmann::json list = nlohmann::json::parse(r.out);
  ASSERT_TRUE(list.is_array());
  std::set<std::string> ids;
  for (const nlohmann::json& p : list) {
    ASSERT_TRUE(p.is_object());
    for (const char* key : {"kind", "name", "version", "path"}) {
      ASSERT_TRUE(p.contains(key)) << key << " missing in " << p.dump();
      ASSERT_TRUE(p[key].is_string());
    }
    EXPECT_TRUE(fs::exists(p["path"].get<std::string>())) << p.dump();
    ids.insert(p["kind"].get<std::string>() + "/" + p["name"].get<std::string>());
  }
  for (const char* id : {"backend/cpu", "attention/mqa", "moe/topk", "optim/adamw",
                         "tokenizer/byte", "decode/top_p"}) {
    EXPECT_TRUE(ids.count(id)) << id << " not listed in " << r.out;
  }
}

TEST(CliBasics, PluginsNamesANonPluginLibraryAsSkipped) {
  TempDir dir;
  fs::path system_lib;
  for (const char* candidate :
       {"/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1", "/usr/lib/libz.so.1"}) {
    if (fs::exists(candidate)) {
      system_lib = candidate;
      break;
    }
  }
  if (system_lib.empty()) GTEST_SKIP() << "no libz.so.1 to copy";
  const fs::path plugin_dir = dir / "extra";
  fs::create_directories(plugin_dir);
  fs::copy_file(system_lib, plugin_dir / "libnot_a_plugin.so");
  const RunResult r = run_nnkit({"plugins", "--plugin-path", plugin_dir.string()});
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "Search paths");
  EXPECT_MENTIONS(r.out, plugin_dir.string());
  EXPECT_MENTIONS(r.out, "Skipped libraries");
  EXPECT_MENTIONS(r.out, "libnot_a_plugin.so");
  EXPECT_MENTIONS(r.out, "not an nnkit plugin");
  // The real plugins are still found.
  EXPECT_MENTIONS(r.out, "backend/cpu");
}

TEST(CliBasics, PluginsDescribePrintsOptions) {
  const RunResult r = run_nnkit({"plugins", "--describe", "moe/topk"});
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "moe/topk");
  EXPECT_MENTIONS(r.out, "top_k");
  const RunResult bad = run_nnkit({"plugins", "--describe", "moe/topkk"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_MENTIONS(bad.err, "unknown moe plugin 'topkk'");
  EXPECT_MENTIONS(bad.err, "topk");
}

TEST(CliBasics, ValidateCountsTheFlagshipModel) {
  const fs::path config = source_dir() / "configs" / "cuda-nn-6.9b.yaml";
  ASSERT_TRUE(fs::exists(config)) << config;
  const RunResult r = run_nnkit({"validate", config.string(), "--json"});
  ASSERT_EXIT_CODE(r, 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("total_params").get<int64_t>(), 6882678528);
  EXPECT_EQ(j.at("active_params").get<int64_t>(), 1786599168);
  EXPECT_TRUE(j.at("moe").get<bool>());
  // The text form groups digits.
  const RunResult text = run_nnkit({"validate", config.string()});
  EXPECT_EXIT_CODE(text, 0);
  EXPECT_MENTIONS(text.out, "6,882,678,528");
  EXPECT_MENTIONS(text.out, "1,786,599,168");
  EXPECT_MENTIONS(text.out, "is valid");
}

TEST(CliBasics, ValidateAppliesDottedOverrides) {
  const fs::path config = source_dir() / "configs" / "tiny.yaml";
  const RunResult base = run_nnkit({"validate", config.string(), "--json"});
  ASSERT_EXIT_CODE(base, 0);
  const RunResult r = run_nnkit(
      {"validate", config.string(), "model.n_layers=2", "model.moe.router.top_k=1", "--json"});
  ASSERT_EXIT_CODE(r, 0);
  const nlohmann::json b = nlohmann::json::parse(base.out);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("n_layers").get<int64_t>(), 2);
  EXPECT_LT(j.at("total_params").get<int64_t>(), b.at("total_params").get<int64_t>());
  EXPECT_LT(j.at("active_params").get<int64_t>(), j.at("total_params").get<int64_t>());
  const std::string resolved = j.at("resolved").get<std::string>();
  EXPECT_MENTIONS(resolved, "top_k: 1");
}

TEST(CliBasics, ValidateDenseModelHasAllParametersActive) {
  const fs::path config = source_dir() / "configs" / "dense-tiny.yaml";
  const RunResult r = run_nnkit({"validate", config.string(), "--json"});
  ASSERT_EXIT_CODE(r, 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_FALSE(j.at("moe").get<bool>());
  EXPECT_GT(j.at("total_params").get<int64_t>(), 0);
  EXPECT_EQ(j.at("active_params").get<int64_t>(), j.at("total_params").get<int64_t>());
}

}  // namespace
}  // namespace nnkit::clitest
