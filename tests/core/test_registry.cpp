// Registry: discovery of the real plugins, refusal of foreign / wrong-ABI / wrong-tag libraries
// with a logged reason, unknown plugin names listing the alternatives, errors from factories.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>

#include "nnkit/backend.h"
#include "nnkit/layer.h"
#include "nnkit/registry.h"
#include "nnkit/version.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

bool has_plugin(const Registry& r, const std::string& kind, const std::string& name) {
  return r.find(kind, name) != nullptr;
}

const RejectedLibrary* rejected_named(const Registry& r, const std::string& fragment) {
  for (const RejectedLibrary& lib : r.rejected()) {
    if (lib.path.find(fragment) != std::string::npos) return &lib;
  }
  return nullptr;
}

TEST(Registry, FindsEveryBuiltInPluginFromTheBuildTree) {
  const Registry& r = test::registry();
  for (const auto& [kind, name] :
       std::vector<std::pair<std::string, std::string>>{{"backend", "cpu"},
                                                        {"attention", "mqa"},
                                                        {"moe", "topk"},
                                                        {"moe", "swiglu"},
                                                        {"ffn", "swiglu"},
                                                        {"norm", "rmsnorm"},
                                                        {"optim", "adamw"},
                                                        {"schedule", "warmup_cosine"},
                                                        {"decode", "greedy"},
                                                        {"decode", "top_p"},
                                                        {"tokenizer", "byte"}}) {
    EXPECT_TRUE(has_plugin(r, kind, name)) << kind << "/" << name;
  }
  for (const PluginInfo& p : r.plugins()) {
    EXPECT_FALSE(p.version.empty()) << p.id();
    EXPECT_TRUE(p.path.find("libnnkit_") != std::string::npos) << p.path;
  }
}

TEST(Registry, SkipsForeignAndMismatchedLibrariesWithReasons) {
  const Registry r({NNKIT_TEST_PLUGIN_FIXTURES});
  const RejectedLibrary* foreign = rejected_named(r, "not_a_plugin");
  ASSERT_NE(foreign, nullptr);
  EXPECT_NE(foreign->reason.find("not an nnkit plugin"), std::string::npos) << foreign->reason;
  const RejectedLibrary* abi = rejected_named(r, "wrong_abi");
  ASSERT_NE(abi, nullptr);
  EXPECT_NE(abi->reason.find("ABI version " + std::to_string(kPluginAbiVersion + 998)),
            std::string::npos)
      << abi->reason;
  EXPECT_NE(abi->reason.find("ABI version " + std::to_string(kPluginAbiVersion)),
            std::string::npos);
  const RejectedLibrary* tag = rejected_named(r, "bad_tag");
  ASSERT_NE(tag, nullptr);
  EXPECT_NE(tag->reason.find("gcc-1;libstdc++-1"), std::string::npos) << tag->reason;
  EXPECT_FALSE(has_plugin(r, "norm", "wrong_abi"));
  EXPECT_FALSE(has_plugin(r, "norm", "bad_tag"));
  // Right ABI number and compiler, other SDK headers (a stale build): refused, saying so.
  const RejectedLibrary* stale = rejected_named(r, "stale_headers");
  ASSERT_NE(stale, nullptr);
  EXPECT_NE(stale->reason.find("headers-0123456789abcdef"), std::string::npos) << stale->reason;
  EXPECT_NE(stale->reason.find("headers-" NNKIT_HEADERS_HASH), std::string::npos) << stale->reason;
  EXPECT_NE(stale->reason.find("stale build"), std::string::npos) << stale->reason;
  EXPECT_FALSE(has_plugin(r, "norm", "stale_headers"));
  EXPECT_TRUE(has_plugin(r, "norm", "always_fails"));
}

TEST(Registry, UnknownPluginListsTheAvailableOnes) {
  try {
    test::registry().require("attention", "flash9", "model.attention.type at x.yaml:3:5");
    FAIL() << "expected PluginError";
  } catch (const PluginError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("unknown attention plugin 'flash9'"), std::string::npos) << m;
    EXPECT_NE(m.find("x.yaml:3:5"), std::string::npos) << m;
    EXPECT_NE(m.find("mqa"), std::string::npos) << m;
  }
}

TEST(Registry, FactoryErrorsCrossTheLibraryBoundaryAsConfigErrors) {
  const Registry r({NNKIT_TEST_PLUGIN_FIXTURES});
  Options options("norm/always_fails", "model.norm", SourceLocation{"f.yaml", 2, 3});
  Options::Value v;
  v.int_value = 3;
  v.location = SourceLocation{"f.yaml", 2, 10};
  options.set("level", v);
  try {
    r.create<Norm>("norm", "always_fails", CreateArgs{options, {}, nullptr});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("[norm/always_fails] model.norm.level is always wrong"), std::string::npos)
        << m;
    EXPECT_NE(m.find("f.yaml:2:10"), std::string::npos) << m;
  }
}

TEST(Registry, TheSameFolderTwiceLoadsEachLibraryOnce) {
  const std::string real_dir =
      std::filesystem::path(test::registry().find("backend", "cpu")->path).parent_path().string();
  const Registry r({real_dir, real_dir});
  // The same files reached twice are the same libraries: found once, no conflict, nothing
  // skipped (a second library of the same kind/name is a conflict: tests/sdk/test_loading.cpp).
  EXPECT_EQ(r.plugins().size(), test::registry().plugins().size());
  EXPECT_EQ(rejected_named(r, "libnnkit_backend_cpu"), nullptr);
  EXPECT_TRUE(r.find("backend", "cpu")->conflicts.empty());
}

TEST(Registry, ComponentsKeepTheirLibraryAliveAfterTheRegistryIsGone) {
  std::shared_ptr<Backend> backend;
  {
    Registry r(Registry::default_search_paths());
    Options options("backend/cpu", "backend", {});
    for (const OptionSpec& spec : r.find("backend", "cpu")->options) {
      Options::Value v;
      v.type = spec.type;
      v.int_value = 1;
      options.set(spec.name, v);
    }
    backend = r.create<Backend>("backend", "cpu", CreateArgs{options, {}, nullptr});
  }
  Tensor t = backend->zeros({4});
  backend->fill(t, 2.5f);
  float host[4];
  backend->copy_to_host(host, t);
  EXPECT_EQ(host[3], 2.5f);
}

}  // namespace
}  // namespace nnkit

namespace nnkit {
namespace {

TEST(Registry, SearchPathOrderIsExplicitThenEnvironmentThenCoreFolder) {
  ::setenv("NNKIT_PLUGIN_PATH", "/env/one:/env/two", 1);
  const auto paths = Registry::default_search_paths({"/explicit"});
  ::unsetenv("NNKIT_PLUGIN_PATH");
  ASSERT_EQ(paths.size(), 4u);
  EXPECT_EQ(paths[0], "/explicit");
  EXPECT_EQ(paths[1], "/env/one");
  EXPECT_EQ(paths[2], "/env/two");
  EXPECT_EQ(paths[3].filename(), "plugins");
  EXPECT_EQ(paths[3].parent_path().filename(), "nnkit");
}

TEST(Registry, EnvironmentPathFindsFixturePlugins) {
  ::setenv("NNKIT_PLUGIN_PATH", NNKIT_TEST_PLUGIN_FIXTURES, 1);
  const Registry r(Registry::default_search_paths());
  ::unsetenv("NNKIT_PLUGIN_PATH");
  EXPECT_NE(r.find("norm", "always_fails"), nullptr);
  EXPECT_NE(r.find("backend", "cpu"), nullptr);
}

}  // namespace
}  // namespace nnkit
