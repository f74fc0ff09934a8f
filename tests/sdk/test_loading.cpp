// The loading rules of issue 11 through the real registry and config path: a second library
// providing a kind/name is an error naming both files unless plugin_prefer chooses; throwing
// anything from a factory is a PluginError naming the plugin; a default outside its own range is
// blamed on the plugin; names that look like paths and world-writable folders are refused; a
// router in the experts slot is told so; a layer returning the wrong shape is named by the
// model; and loading, using and unloading plugins 100 times leaves nothing behind (the ASan
// build's LeakSanitizer checks the last part).
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "nnkit/config.h"
#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/model.h"
#include "nnkit/plugin_record.h"
#include "nnkit/registry.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

namespace fs = std::filesystem;

fs::path fixture_dir(const std::string& variant) {
  return fs::path(NNKIT_SDK_FIXTURES) / variant;
}
fs::path fixture_lib(const std::string& variant) {
  return fixture_dir(variant) / ("libbroken_" + variant + ".so");
}

std::vector<fs::path> with_defaults(const fs::path& first) {
  return Registry::default_search_paths({first});
}

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A tiny dense model with the given norm plugin, as YAML.
std::string model_yaml(const std::string& norm, const std::string& extra = "") {
  return extra + "model:\n  vocab_size: 32\n  hidden_dim: 8\n  n_layers: 1\n  max_seq_len: 8\n" +
         "  norm: " + norm + "\n" +
         "  attention: {type: mqa, n_heads: 2, n_kv_heads: 1, head_dim: 4}\n" +
         "  ffn: {type: swiglu, ffn_dim: 16}\ntrain: {seq_len: 8}\n";
}

TEST(Loading, ASecondLibraryOfABuiltInNameIsAnErrorNamingBothFiles) {
  const Registry r(with_defaults(fixture_dir("shadow")));
  const std::string builtin = test::registry().find("norm", "rmsnorm")->path;
  const std::string m = message_of([&] { r.require("norm", "rmsnorm", "model.norm.type"); });
  EXPECT_TRUE(contains(m, fixture_lib("shadow").string())) << m;
  EXPECT_TRUE(contains(m, builtin)) << m;
  EXPECT_TRUE(contains(m, "plugin_prefer")) << m;
  EXPECT_TRUE(contains(m, "model.norm.type")) << m;
  // Creating through it fails the same way; other plugins are unaffected.
  Options none;
  EXPECT_THROW(r.create<Norm>("norm", "rmsnorm", CreateArgs{none, {}, nullptr}), PluginError);
  EXPECT_NO_THROW(r.require("attention", "mqa"));
}

TEST(Loading, PluginPreferChoosesEitherLibrary) {
  const std::string builtin = test::registry().find("norm", "rmsnorm")->path;
  for (const std::string& chosen : {fixture_lib("shadow").string(), builtin}) {
    RegistryOptions options;
    options.prefer["norm/rmsnorm"] = chosen;
    const Registry r(with_defaults(fixture_dir("shadow")), options);
    EXPECT_EQ(r.require("norm", "rmsnorm").path, chosen);
    EXPECT_TRUE(r.require("norm", "rmsnorm").conflicts.empty());
  }
  // A preferred file that does not provide the plugin is an error, not a silent fallback.
  RegistryOptions wrong;
  wrong.prefer["norm/rmsnorm"] = test::registry().find("attention", "mqa")->path;
  const Registry r(with_defaults(fixture_dir("shadow")), wrong);
  const std::string m = message_of([&] { r.require("norm", "rmsnorm"); });
  EXPECT_TRUE(contains(m, "does not provide it")) << m;
}

TEST(Loading, ARecordedLibraryWinsWhenItLoadsAndIsIgnoredWhenNot) {
  const std::string builtin = test::registry().find("norm", "rmsnorm")->path;
  RegistryOptions recorded;
  recorded.prefer_if_loadable["norm/rmsnorm"] = fixture_lib("shadow");
  const Registry wins(with_defaults(fixture_dir("shadow")), recorded);
  EXPECT_EQ(wins.require("norm", "rmsnorm").path, fixture_lib("shadow").string());
  // A recorded file that provides something else (or nothing loadable): the search path decides.
  RegistryOptions stale;
  stale.prefer_if_loadable["norm/rmsnorm"] = test::registry().find("attention", "mqa")->path;
  const Registry falls_back(Registry::default_search_paths(), stale);
  EXPECT_EQ(falls_back.require("norm", "rmsnorm").path, builtin);
}

TEST(Loading, PluginPreferFromTheYamlResolvesRelativeToTheFile) {
  const fs::path dir = fs::temp_directory_path() / "nnkit-prefer-test";
  fs::create_directories(dir);
  const fs::path config = dir / "prefer.yaml";
  std::ofstream(config) << model_yaml(
      "{type: rmsnorm}", "plugin_prefer: {norm/rmsnorm: " + fixture_lib("shadow").string() +
                             "}\nplugin_paths: [" + fixture_dir("shadow").string() + "]\n");
  const ConfigDocument doc = ConfigDocument::load_file(config);
  ASSERT_EQ(doc.plugin_prefer().size(), 1u);
  RegistryOptions options;
  options.prefer = doc.plugin_prefer();
  const Registry r(Registry::default_search_paths(doc.plugin_paths()), options);
  const RunConfig cfg = resolve_config(doc, r);
  EXPECT_EQ(r.require("norm", "rmsnorm").version, "9.9.9");
  EXPECT_NE(cfg.to_yaml().find("plugin_prefer"), std::string::npos);
  // Without the preference the same config is refused, naming both files.
  const ConfigDocument plain = ConfigDocument::parse(
      model_yaml("{type: rmsnorm}", "plugin_paths: [" + fixture_dir("shadow").string() + "]\n"),
      "plain.yaml");
  const Registry r2(Registry::default_search_paths(plain.plugin_paths()));
  const std::string m = message_of([&] { resolve_config(plain, r2); });
  EXPECT_TRUE(contains(m, fixture_lib("shadow").string())) << m;
  fs::remove_all(dir);
}

TEST(Loading, ThrowingAnIntFromAConstructorIsAPluginErrorNamingThePlugin) {
  const Registry r(with_defaults(fixture_dir("throw42")));
  const ConfigDocument doc = ConfigDocument::parse(model_yaml("{type: throws_42}"), "t.yaml");
  try {
    resolve_config(doc, r);  // probes the plugin: the process must survive
    FAIL() << "expected PluginError";
  } catch (const PluginError& e) {
    EXPECT_EQ(e.component(), "norm/throws_42") << e.what();
    EXPECT_TRUE(contains(e.what(), "not a std::exception")) << e.what();
  }
}

TEST(Loading, ADefaultOutsideItsOwnRangeIsBlamedOnThePlugin) {
  const Registry r(with_defaults(fixture_dir("default")));
  const ConfigDocument doc = ConfigDocument::parse(model_yaml("{type: bad_default}"), "d.yaml");
  try {
    resolve_config(doc, r);
    FAIL() << "expected PluginError";
  } catch (const PluginError& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.component(), "norm/bad_default") << m;
    EXPECT_TRUE(contains(m, "default 5 is outside its own range [0, 1]")) << m;
    EXPECT_TRUE(contains(m, "bug in the plugin")) << m;
    EXPECT_TRUE(contains(m, fixture_lib("default").string())) << m;
  }
  // Set explicitly, the value is the user's and the plugin works.
  const ConfigDocument ok =
      ConfigDocument::parse(model_yaml("{type: bad_default, eps: 0.001}"), "d.yaml");
  EXPECT_NO_THROW(resolve_config(ok, r));
}

TEST(Loading, NamesThatLookLikePathsAreRefused) {
  const Registry r({fixture_dir("name")});
  ASSERT_EQ(r.rejected().size(), 1u);
  EXPECT_TRUE(contains(r.rejected()[0].reason, "not a plain name")) << r.rejected()[0].reason;
  EXPECT_TRUE(r.plugins().empty());
  EXPECT_FALSE(is_plain_plugin_name("a/b"));
  EXPECT_FALSE(is_plain_plugin_name(".."));
  EXPECT_FALSE(is_plain_plugin_name("a\\b"));
  EXPECT_FALSE(is_plain_plugin_name(""));
  EXPECT_TRUE(is_plain_plugin_name("top_k-2.v1"));
  const ConfigDocument doc = ConfigDocument::parse(model_yaml("{type: ../rmsnorm}"), "n.yaml");
  const std::string m = message_of([&] { resolve_config(doc, test::registry()); });
  EXPECT_TRUE(contains(m, "is not a plugin name")) << m;
}

TEST(Loading, WorldWritableFoldersAndFilesAreRefusedUnlessAllowed) {
  const fs::path dir = fs::temp_directory_path() / "nnkit-unsafe-test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path lib = dir / "libgood.so";
  fs::copy_file(fixture_lib("good"), lib);
  ::chmod(dir.c_str(), 0777);
  {
    const Registry r({dir});
    EXPECT_EQ(r.find("norm", "good_rms"), nullptr);
    ASSERT_EQ(r.rejected().size(), 1u);
    EXPECT_TRUE(contains(r.rejected()[0].reason, "world-writable")) << r.rejected()[0].reason;
    EXPECT_TRUE(contains(r.rejected()[0].reason, "--allow-unsafe-plugin-dirs"));
    const Registry file_path({lib});  // naming the file does not get around its folder
    EXPECT_EQ(file_path.find("norm", "good_rms"), nullptr);
  }
  RegistryOptions allow;
  allow.allow_unsafe_dirs = true;
  EXPECT_NE(Registry({dir}, allow).find("norm", "good_rms"), nullptr);
  ::chmod(dir.c_str(), 0755);
  ::chmod(lib.c_str(), 0777);
  EXPECT_EQ(Registry({dir}).find("norm", "good_rms"), nullptr);
  ::chmod(lib.c_str(), 0755);
  EXPECT_NE(Registry({dir}).find("norm", "good_rms"), nullptr);
  fs::remove_all(dir);
}

TEST(Loading, ARouterInTheExpertsSlotIsToldItIsARouter) {
  EXPECT_EQ(test::registry().role_of(*test::registry().find("moe", "topk")), "router");
  EXPECT_EQ(test::registry().role_of(*test::registry().find("moe", "swiglu")), "experts");
  EXPECT_EQ(test::registry().role_of(*test::registry().find("norm", "rmsnorm")), "");
  const std::string yaml =
      "model:\n  vocab_size: 32\n  hidden_dim: 8\n  n_layers: 1\n  max_seq_len: 8\n"
      "  attention: {type: mqa, n_heads: 2, n_kv_heads: 1, head_dim: 4}\n"
      "  moe:\n    router: {type: topk, top_k: 2}\n    experts: {type: topk, n_experts: 4}\n";
  const ConfigDocument doc = ConfigDocument::parse(yaml, "r.yaml");
  const std::string m = message_of([&] { resolve_config(doc, test::registry()); });
  EXPECT_TRUE(contains(m, "topk is a router")) << m;
  EXPECT_TRUE(contains(m, "model.moe.router")) << m;
  EXPECT_TRUE(contains(m, "r.yaml:9:")) << m;
  EXPECT_TRUE(contains(m, "Available experts: swiglu")) << m;
  const std::string swapped =
      "model:\n  vocab_size: 32\n  hidden_dim: 8\n  n_layers: 1\n  max_seq_len: 8\n"
      "  attention: {type: mqa, n_heads: 2, n_kv_heads: 1, head_dim: 4}\n"
      "  moe:\n    router: {type: swiglu}\n    experts: {type: swiglu, n_experts: 4, ffn_dim: 8}\n";
  const std::string m2 = message_of(
      [&] { resolve_config(ConfigDocument::parse(swapped, "s.yaml"), test::registry()); });
  EXPECT_TRUE(contains(m2, "swiglu is an experts plugin")) << m2;
}

TEST(Loading, ALayerReturningTheWrongShapeIsNamedByTheModel) {
  const Registry r(with_defaults(fixture_dir("shape")));
  const ConfigDocument doc = ConfigDocument::parse(model_yaml("{type: wrong_shape}"), "w.yaml");
  const RunConfig cfg = resolve_config(doc, r);  // validation cannot see it: nothing runs there
  auto backend = test::cpu_backend(1);
  Transformer model(cfg, r, backend);
  model.allocate(true);
  model.init_random(1);
  const std::vector<int32_t> ids = {1, 2, 3, 4}, targets = {2, 3, 4, 5};
  try {
    model.forward_loss(ids, targets, 1, 4, true, false);
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.component(), "norm/wrong_shape") << m;
    EXPECT_TRUE(contains(m, "forward returned")) << m;
    EXPECT_TRUE(contains(m, "f32[4, 16]")) << m;
  }
}

TEST(Loading, TheSameFolderTwiceIsOneLibraryNotAConflict) {
  const fs::path dir = fixture_dir("good");
  const Registry r({dir, dir, fixture_lib("good")});
  ASSERT_NE(r.find("norm", "good_rms"), nullptr);
  EXPECT_TRUE(r.find("norm", "good_rms")->conflicts.empty());
  EXPECT_TRUE(r.rejected().empty());
}

TEST(Loading, LoadUseUnload100TimesLeavesNothingBehind) {
  // Each round opens every library afresh (a Registry of its own), builds a model with the
  // fixture norm, trains one step, then drops everything: the components' deleters hold their
  // libraries, so the last owner gone unloads the code. LeakSanitizer (the ASan build) checks
  // that nothing was left allocated; running the next round checks nothing dangles.
  // Only the libraries the model uses (loading the CUDA backend's runtime 100 times would
  // dominate the test's time without testing more).
  std::vector<fs::path> libraries = {fixture_dir("good")};
  for (const char* id : {"backend/cpu", "attention/mqa", "ffn/swiglu", "tokenizer/byte",
                         "optim/adamw", "schedule/warmup_cosine", "decode/greedy"}) {
    const std::string text = id;
    const size_t slash = text.find('/');
    libraries.push_back(
        test::registry().require(text.substr(0, slash), text.substr(slash + 1)).path);
  }
  for (int round = 0; round < 100; ++round) {
    auto registry = std::make_unique<Registry>(libraries);
    const RunConfig cfg =
        resolve_config(ConfigDocument::parse(model_yaml("{type: good_rms}"), "g.yaml"), *registry);
    auto backend = registry->create<Backend>(cfg.backend.kind, cfg.backend.name,
                                             CreateArgs{cfg.backend.options, {}, nullptr});
    auto model = std::make_unique<Transformer>(cfg, *registry, backend);
    registry.reset();  // components keep their own libraries
    model->allocate(true);
    model->init_random(static_cast<uint64_t>(round));
    const double loss = model->forward_loss({1, 2, 3, 4}, {2, 3, 4, 5}, 1, 4, true, false);
    ASSERT_TRUE(std::isfinite(loss)) << "round " << round;
    model->backward(1.0f);
    model.reset();
    backend.reset();
    // Nothing holds the fixture library any more: the dynamic loader has unmapped it, so no
    // code of it can run (a leaked reference would keep it loaded).
    void* still_loaded = ::dlopen(fixture_lib("good").c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (still_loaded != nullptr) ::dlclose(still_loaded);
    ASSERT_EQ(still_loaded, nullptr) << "round " << round << ": the library is still loaded";
  }
}

}  // namespace
}  // namespace nnkit

namespace nnkit {
namespace {

TEST(PluginRecord, Sha256KnownAnswers) {
  // FIPS 180-4 examples (and the million-'a' vector, which crosses many blocks).
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(PluginRecord, RecordsEveryPluginOfAConfigAndNamesChanges) {
  const ConfigDocument doc = ConfigDocument::parse(model_yaml("{type: rmsnorm}"), "p.yaml");
  const RunConfig cfg = resolve_config(doc, test::registry());
  const std::vector<PluginRecord> records = plugin_records(cfg, test::registry());
  std::vector<std::string> ids;
  for (const PluginRecord& r : records) {
    ids.push_back(r.id());
    EXPECT_TRUE(fs::path(r.path).is_absolute()) << r.path;
    EXPECT_EQ(r.sha256, sha256_file(r.path));
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"norm/rmsnorm", "attention/mqa", "ffn/swiglu",
                                           "backend/cpu", "tokenizer/byte", "optim/adamw",
                                           "schedule/warmup_cosine", "decode/greedy"}));
  const fs::path dir = fs::temp_directory_path() / "nnkit-record-test";
  fs::create_directories(dir);
  write_plugin_records(dir, records);
  const std::vector<PluginRecord> back = read_plugin_records(dir);
  ASSERT_EQ(back.size(), records.size());
  EXPECT_EQ(back[3].path, records[3].path);
  EXPECT_TRUE(plugin_record_changes(records, back).empty());
  std::vector<PluginRecord> changed = back;
  changed[0].sha256 = std::string(64, '0');
  changed[1].path = "/elsewhere/libnnkit_attention_mqa.so";
  const std::vector<std::string> changes = plugin_record_changes(records, changed);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_NE(changes[0].find("norm/rmsnorm: "), std::string::npos) << changes[0];
  EXPECT_NE(changes[0].find("changed since the run started"), std::string::npos) << changes[0];
  EXPECT_NE(changes[1].find("now comes from /elsewhere"), std::string::npos) << changes[1];
  EXPECT_TRUE(read_plugin_records(dir / "missing").empty());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace nnkit
