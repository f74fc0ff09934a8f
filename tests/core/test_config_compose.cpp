// Purpose: configuration composition (config/compose.h, config/references.h): include: merging
// (order, deep merge of mappings, lists and scalars replaced, nesting, paths relative to the
// including file), ${...} references (types kept, interpolation, references of references,
// following overrides), where values came from (error positions in included files, origin_of),
// and the messages for bad input: include cycles, missing includes, malformed include: values,
// references that point nowhere, reference cycles.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nnkit/config.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

namespace fs = std::filesystem;

// The model every test starts from; line numbers in expected messages count from here.
const char* kModel = R"(model:
  vocab_size: 260
  hidden_dim: 32
  n_layers: 2
  max_seq_len: 64
  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8}
  moe:
    router: {type: topk, top_k: 2}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 16}
train: {seq_len: 32}
)";

// Whether `text` holds `part`; the failure message shows both.
::testing::AssertionResult mentions(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "missing '" << part << "' in:\n" << text;
}

// kModel with its first `from` replaced by `to`.
std::string model_with(const std::string& from, const std::string& to) {
  std::string text = kModel;
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

class ConfigCompose : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = fs::temp_directory_path() / ("nnkit_compose_" + std::to_string(::getpid()) + "_" + test);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `text` to `name` below the test folder; returns its path.
  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
    return path;
  }
  // How messages name the file `name` of the test folder.
  std::string shown(const std::string& name) const { return (dir_ / name).string(); }

  ConfigDocument load(const std::string& name, const std::vector<std::string>& overrides = {}) {
    ConfigDocument doc = ConfigDocument::load_file(dir_ / name);
    int argument = 3;
    for (const std::string& o : overrides) doc.apply_override(o, argument++);
    return doc;
  }
  RunConfig resolve(const std::string& name, const std::vector<std::string>& overrides = {}) {
    return resolve_config(load(name, overrides), test::registry());
  }
  // The ConfigError that loading and resolving `name` throws ("" and a failure when none).
  std::string error_of(const std::string& name, const std::vector<std::string>& overrides = {}) {
    try {
      resolve(name, overrides);
    } catch (const ConfigError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for " << name;
    return "";
  }

  // The error of exp.yaml: kModel (included) and `lines` below.
  std::string error_with(const std::string& lines) {
    write("model.yaml", kModel);
    write("exp.yaml", "include: model.yaml\n" + lines + "\n");
    return error_of("exp.yaml");
  }

  fs::path dir_;
};

TEST_F(ConfigCompose, IncludesAndReferencesResolveLikeTheHandWrittenConfig) {
  write("by_hand.yaml", R"(seed: 7
model:
  vocab_size: 260
  hidden_dim: 32
  n_layers: 2
  max_seq_len: 64
  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8}
  moe:
    router: {type: topk, top_k: 1, aux_loss_weight: 0.05}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 32}
train: {seq_len: 32, steps: 20, data: data/demo.tokens, optimizer: {type: adamw, lr: 0.002}}
decode: [{type: top_k, k: 8}, {type: temperature, value: 0.7}]
)");
  write("base/model.yaml", R"(model:
  vocab_size: 260
  hidden_dim: 64
  n_layers: 2
  max_seq_len: 64
  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8}
  moe:
    router: {type: topk, top_k: 2, aux_loss_weight: 0.05}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 16}
decode: [{type: greedy}]
)");
  // Nested: model.yaml is relative to base/, the folder of this file.
  write("base/train.yaml", R"(include: model.yaml
seed: 7
train: {seq_len: 32, steps: 20, optimizer: {type: adamw, lr: 0.002}}
)");
  write("wide.yaml", "model: {hidden_dim: 48}\nvars: {folder: data}\n");
  write("exp.yaml", R"(include: [base/train.yaml, wide.yaml]
vars:
  width: 32
  sampling: [{type: top_k, k: 8}, {type: temperature, value: 0.7}]
model:
  hidden_dim: ${vars.width}
  moe:
    router: {top_k: 1}
    experts: {ffn_dim: "${model.hidden_dim}"}
train: {data: "${vars.folder}/demo.tokens"}
decode: ${vars.sampling}
)");
  EXPECT_EQ(resolve("exp.yaml").to_yaml(), resolve("by_hand.yaml").to_yaml());
}

TEST_F(ConfigCompose, LaterIncludesOverrideEarlierOnesAndTheFileItselfOverridesBoth) {
  write("model.yaml", kModel);
  write("a.yaml", "train: {steps: 5, seq_len: 16, batch_size: 2}\n");
  write("b.yaml", "train: {steps: 6, batch_size: 4}\n");
  write("ab.yaml", "include: [model.yaml, a.yaml, b.yaml]\ntrain: {batch_size: 3}\n");
  write("ba.yaml", "include: [model.yaml, b.yaml, a.yaml]\n");
  const RunConfig ab = resolve("ab.yaml");
  EXPECT_EQ(ab.train.steps, 6);       // b after a
  EXPECT_EQ(ab.train.seq_len, 16);    // only a sets it: the train mappings merge
  EXPECT_EQ(ab.train.batch_size, 3);  // the including file last
  const RunConfig ba = resolve("ba.yaml");
  EXPECT_EQ(ba.train.steps, 5);
  EXPECT_EQ(ba.train.batch_size, 2);
}

TEST_F(ConfigCompose, ListsAndScalarsReplaceAndNullDropsAnIncludedSection) {
  write("model.yaml", std::string(kModel) + "decode: [{type: top_k, k: 5}, {type: greedy}]\n");
  write("dense.yaml", R"(include: model.yaml
model:
  moe: null
  ffn: {type: swiglu, ffn_dim: 24}
decode: [{type: temperature, value: 0.5}]
)");
  const RunConfig cfg = resolve("dense.yaml");
  EXPECT_FALSE(cfg.model.is_moe);
  EXPECT_EQ(cfg.model.ffn.options.get_int("ffn_dim"), 24);
  ASSERT_EQ(cfg.decode.size(), 1u);  // replaced, not appended or merged by index
  EXPECT_EQ(cfg.decode[0].name, "temperature");
  EXPECT_EQ(cfg.model.hidden_dim, 32);  // the rest of model is still the included one
}

TEST_F(ConfigCompose, WholeReferencesKeepTheNodeAndLongerTextInterpolates) {
  write("exp.yaml", R"(vars:
  attention: {type: mqa, n_heads: 2, n_kv_heads: 2, head_dim: 16}
  layers: [3, 5]
  name: demo
model:
  vocab_size: 260
  hidden_dim: 32
  n_layers: ${vars.layers[1]}
  max_seq_len: 64
  attention: ${vars.attention}
  moe:
    router: {type: topk, top_k: 2}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 16}
train: {seq_len: 32, data: "runs/${vars.name}-${model.n_layers}/$${HOME}.tokens"}
)");
  const RunConfig cfg = resolve("exp.yaml");
  EXPECT_EQ(cfg.model.n_layers, 5);
  EXPECT_EQ(cfg.model.attention.options.get_int("n_heads"), 2);
  EXPECT_EQ(cfg.model.attention.options.get_int("head_dim"), 16);
  EXPECT_EQ(cfg.train.data, "runs/demo-5/${HOME}.tokens");
  // vars: is for references only: it is not a setting and not in the resolved config.
  EXPECT_EQ(load("exp.yaml").dump().find("vars"), std::string::npos);
}

TEST_F(ConfigCompose, AStoredConfigKeepsALiteralDollarBraceLiteral) {
  write("exp.yaml", model_with("train: {seq_len: 32}", "train: {seq_len: 32, data: 'a/$${x}'}"));
  const RunConfig cfg = resolve("exp.yaml");
  ASSERT_EQ(cfg.train.data, "a/${x}");
  // A run stores to_yaml() and reads it back as a config (resume, export).
  const RunConfig again =
      resolve_config(ConfigDocument::parse(cfg.to_yaml(), "config.yaml"), test::registry());
  EXPECT_EQ(again.train.data, "a/${x}");
}

TEST_F(ConfigCompose, ReferencesFollowOverridesOfWhatTheyName) {
  write("exp.yaml", std::string(R"(vars: {width: 32}
model:
  vocab_size: 260
  hidden_dim: ${vars.width}
  n_layers: 2
  max_seq_len: 64
  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8}
  moe:
    router: {type: topk, top_k: 2}
    experts: {type: swiglu, n_experts: 4, ffn_dim: "${model.hidden_dim}"}
train: {seq_len: 32}
)"));
  EXPECT_EQ(resolve("exp.yaml").model.experts.options.get_int("ffn_dim"), 32);
  const RunConfig wider = resolve("exp.yaml", {"vars.width=48"});
  EXPECT_EQ(wider.model.hidden_dim, 48);
  EXPECT_EQ(wider.model.experts.options.get_int("ffn_dim"), 48);  // a reference of a reference
  EXPECT_EQ(resolve("exp.yaml", {"model.hidden_dim=40"}).model.experts.options.get_int("ffn_dim"),
            40);
  // An override's value may hold a reference too.
  EXPECT_EQ(resolve("exp.yaml", {"train.steps=${model.n_layers}"}).train.steps, 2);
}

TEST_F(ConfigCompose, AnErrorInAnIncludedFileNamesThatFileAndPosition) {
  write("base.yaml", model_with("head_dim: 8", "head_dim: x8"));
  write("exp.yaml", "include: base.yaml\nseed: 3\n");
  EXPECT_TRUE(mentions(
      error_of("exp.yaml"),
      "model.attention.head_dim expects integer, got 'x8' (at " + shown("base.yaml") + ":6:63)"));

  // A key the including file adds to an included mapping is reported in the including file.
  write("model.yaml", kModel);
  write("typo.yaml", "include: model.yaml\nmodel:\n  moe:\n    router: {top_kk: 1}\n");
  EXPECT_TRUE(mentions(error_of("typo.yaml"),
                       "unknown key 'top_kk' in model.moe.router; did you mean 'top_k'? (at " +
                           shown("typo.yaml") + ":4:14)"));
}

TEST_F(ConfigCompose, InAMappingTwoFilesWriteEachValueIsReportedInItsOwnFile) {
  write("base.yaml", model_with("head_dim: 8", "head_dim: x8"));
  // exp.yaml writes into the same model.attention mapping as base.yaml.
  write("exp.yaml", "include: base.yaml\nmodel:\n  attention: {n_heads: 2}\n");
  EXPECT_TRUE(mentions(error_of("exp.yaml"), "got 'x8' (at " + shown("base.yaml") + ":6:63)"));
  write("ok.yaml", kModel);
  write("typed.yaml", "include: ok.yaml\nmodel:\n  attention: {n_heads: two}\n");
  EXPECT_TRUE(mentions(error_of("typed.yaml"), "got 'two' (at " + shown("typed.yaml") + ":3:24)"));
  // A key missing from a merged mapping points at the mapping where the last file writes it.
  write("nohead.yaml", model_with(", head_dim: 8", ""));
  write("missing.yaml", "include: nohead.yaml\nmodel:\n  attention: {n_heads: 2}\n");
  const std::string missing = error_of("missing.yaml");
  EXPECT_TRUE(mentions(missing, "missing required key 'model.attention.head_dim'"));
  EXPECT_TRUE(mentions(missing, "(at " + shown("missing.yaml") + ":3:14)"));
}

TEST_F(ConfigCompose, ReferencesThatNestTooDeepOrChainTooLongAreRefused) {
  write("model.yaml", kModel);
  std::string deep = "include: model.yaml\nvars:\n  d0: 1\n";
  for (int i = 1; i < 70; ++i) {
    deep += "  d" + std::to_string(i) + ": ['${vars.d" + std::to_string(i - 1) + "}']\n";
  }
  write("deep.yaml", deep);
  EXPECT_TRUE(
      mentions(error_of("deep.yaml"),
               "with its references resolved, the document nests deeper than 64 levels at vars.d"));
  // The same chain written the other way round is followed reference by reference.
  std::string chain = "include: model.yaml\nvars:\n";
  for (int i = 70; i > 0; --i) {
    chain += "  c" + std::to_string(i) + ": '${vars.c" + std::to_string(i - 1) + "}'\n";
  }
  write("chain.yaml", chain + "  c0: 1\n");
  EXPECT_TRUE(mentions(error_of("chain.yaml"), "references nested more than 64 deep at ${vars.c"));
}

TEST_F(ConfigCompose, TheYamlRulesHoldInIncludedFiles) {
  write("dup.yaml", "train:\n  steps: 1\n  steps: 2\n");
  write("merge.yaml", "base: &b {steps: 1}\ntrain:\n  <<: *b\n");
  write("tab.yaml", "train:\n\tsteps: 1\n");
  for (const std::string inner : {"dup.yaml", "merge.yaml", "tab.yaml"}) {
    write("exp.yaml", "include: [" + inner + "]\n");
    const std::string message = error_of("exp.yaml");
    EXPECT_TRUE(mentions(message, shown(inner) + ":"));
  }
  write("exp.yaml", "include: dup.yaml\n");
  EXPECT_TRUE(mentions(error_of("exp.yaml"), "duplicate key 'steps' in train at " +
                                                 shown("dup.yaml") + ":3:3 (first at " +
                                                 shown("dup.yaml") + ":2:3); keep one"));
}

TEST_F(ConfigCompose, AnIncludeCycleListsTheChain) {
  write("a.yaml", "include: b.yaml\n");
  write("b.yaml", "seed: 1\ninclude: [model.yaml, a.yaml]\n");
  write("model.yaml", kModel);
  EXPECT_TRUE(mentions(error_of("a.yaml"),
                       "include cycle: " + shown("a.yaml") + " includes " + shown("b.yaml") +
                           " (at " + shown("a.yaml") + ":1:10), which includes " + shown("a.yaml") +
                           " (at " + shown("b.yaml") + ":2:23); remove one of these includes"));
  write("self.yaml", "include: ./self.yaml\n");
  EXPECT_TRUE(mentions(error_of("self.yaml"), "include cycle: " + shown("self.yaml") +
                                                  " includes " + shown("self.yaml") + " (at " +
                                                  shown("self.yaml") + ":1:10)"));
}

TEST_F(ConfigCompose, AMissingIncludeNamesTheIncludingFilePosition) {
  write("sub/exp.yaml", "seed: 1\ninclude: [model.yaml]\n");
  const std::string message = error_of("sub/exp.yaml");
  EXPECT_TRUE(mentions(message, "include 'model.yaml' (at " + shown("sub/exp.yaml") +
                                    ":2:11): no file " + shown("sub/model.yaml") +
                                    "; include paths are relative to the folder of " +
                                    shown("sub/exp.yaml")));
  write("dir.yaml", "include: sub\n");
  EXPECT_TRUE(
      mentions(error_of("dir.yaml"), shown("sub") + " is a directory; include a YAML file"));
  write("list.yaml", "- seed: 1\n");
  write("top.yaml", "include: list.yaml\n");
  EXPECT_TRUE(
      mentions(error_of("top.yaml"), shown("list.yaml") +
                                         " must be a YAML mapping (key: value lines) at the top "
                                         "level, like configs/tiny.yaml (included at " +
                                         shown("top.yaml") + ":1:10)"));
}

TEST_F(ConfigCompose, IncludeMustBeAFileNameOrAListOfThem) {
  write("map.yaml", "include: {file: a.yaml}\n");
  EXPECT_TRUE(mentions(error_of("map.yaml"),
                       "include must be a file name or a list of file names, got "
                       "a mapping (at " +
                           shown("map.yaml") + ":1:10)"));
  write("item.yaml", "include: [a.yaml, [b.yaml]]\n");
  EXPECT_TRUE(mentions(error_of("item.yaml"), "include[1] must be a file name, got a list (at " +
                                                  shown("item.yaml") + ":1:19)"));
  write("empty.yaml", "include: ['']\n");
  EXPECT_TRUE(mentions(error_of("empty.yaml"),
                       "include[0] is an empty file name (at " + shown("empty.yaml") + ":1:11)"));
  write("model.yaml", kModel);
  ConfigDocument doc = load("model.yaml");
  try {
    doc.apply_override("include=model.yaml", 3);
    ADD_FAILURE() << "an include override was accepted";
  } catch (const UsageError& e) {
    EXPECT_TRUE(mentions(std::string(e.what()),
                         "command-line override 'include=model.yaml' (argument "
                         "3): include: belongs in a config file"));
  }
}

TEST_F(ConfigCompose, AReferenceThatPointsNowhereSaysWhyAndSuggests) {
  EXPECT_TRUE(mentions(error_with("train: {steps: '${model.hiden_dim}'}"),
                       "${model.hiden_dim} (at " + shown("exp.yaml") +
                           ":2:16) points nowhere: model has no key 'hiden_dim'; did you mean "
                           "${model.hidden_dim}?"));
  EXPECT_TRUE(mentions(error_with("train: {steps: '${vars.steps}'}"),
                       "points nowhere: the top level has no key 'vars' (its keys: model train); "
                       "references see what the files and overrides write, not defaults"));
  EXPECT_TRUE(mentions(error_with("vars: {l: [1, 2]}\ntrain: {steps: '${vars.l[2]}'}"),
                       "${vars.l[2]} (at " + shown("exp.yaml") +
                           ":3:16) points nowhere: vars.l has 2 entries, so [2] is past its end"));
  EXPECT_TRUE(mentions(error_with("train: {steps: '${model.n_layers.x}'}"),
                       "model.n_layers is the scalar '2', not a mapping, so it has no key 'x'"));
  EXPECT_TRUE(mentions(
      error_with("train: {steps: '${model..x}'}"),
      "malformed reference ${model..x} in '${model..x}' (at " + shown("exp.yaml") + ":2:16)"));
}

TEST_F(ConfigCompose, AReferenceCycleIsAnErrorWithItsChain) {
  write("model.yaml", kModel);
  write("pair.yaml", "include: model.yaml\nvars:\n  a: ${vars.b}\n  b: ${vars.a}\n");
  EXPECT_TRUE(mentions(error_of("pair.yaml"),
                       "reference cycle: vars.a = ${vars.b} (at " + shown("pair.yaml") +
                           ":3:6) -> vars.b = ${vars.a} (at " + shown("pair.yaml") +
                           ":4:6) -> vars.a; replace one of these references with a "
                           "value"));
  write("inside.yaml", "include: model.yaml\nvars:\n  x: {y: '${vars.x}'}\n");
  EXPECT_TRUE(
      mentions(error_of("inside.yaml"), "reference cycle: vars.x -> vars.x.y = ${vars.x} (at " +
                                            shown("inside.yaml") + ":3:10) -> vars.x"));
}

TEST_F(ConfigCompose, MalformedReferencesAndMappingsInTextAreRefused) {
  EXPECT_TRUE(mentions(error_with("train: {data: 'a${model'}"),
                       "unterminated reference in 'a${model' (at " + shown("exp.yaml") +
                           ":2:15): close it with '}'"));
  EXPECT_TRUE(mentions(error_with("train: {data: 'a${}'}"), "empty reference ${}"));
  // Unquoted in a flow mapping, the braces of ${...} end the mapping: a YAML error with a hint.
  EXPECT_TRUE(mentions(error_with("train: {steps: ${model.n_layers}}"),
                       "YAML syntax error at " + shown("exp.yaml") + ":2:"));
  EXPECT_TRUE(mentions(error_with("train: {steps: ${model.n_layers}}"),
                       "inside {...} and [...] write a reference in quotes"));
  EXPECT_TRUE(mentions(error_with("train: {data: 'x-${model.moe}'}"),
                       "'x-${model.moe}' (at " + shown("exp.yaml") +
                           ":2:15) puts ${model.moe} into text, but model.moe is a mapping"));
}

TEST_F(ConfigCompose, ErrorsThroughReferencesPointAtTheReferenceOrIntoTheCopiedMapping) {
  write("vars.yaml", R"(vars:
  heads: four
  attention: {type: mqa, n_heads: 4, n_kv_headz: 1, head_dim: 8}
)");
  write("scalar.yaml",
        "include: [model.yaml, vars.yaml]\nmodel:\n  attention: {n_heads: '${vars.heads}'}\n");
  write("model.yaml", kModel);
  // The value is the reference's: reported where the reference is.
  EXPECT_TRUE(
      mentions(error_of("scalar.yaml"), "model.attention.n_heads expects integer, got 'four' (at " +
                                            shown("scalar.yaml") + ":3:24)"));
  // Keys inside a referenced mapping are reported where that mapping is written.
  write("map.yaml", "include: [model.yaml, vars.yaml]\nmodel:\n  attention: ${vars.attention}\n");
  EXPECT_TRUE(mentions(error_of("map.yaml"),
                       "unknown key 'n_kv_headz' in model.attention; did you mean "
                       "'n_kv_heads'? (at " +
                           shown("vars.yaml") + ":3:38)"));
}

TEST_F(ConfigCompose, OriginOfNamesTheFileTheOverrideOrTheDefault) {
  write("model.yaml", kModel);
  write("exp.yaml", R"(include: model.yaml
vars: {steps: 40}
train:
  steps: ${vars.steps}
  batch_size: 4
)");
  const ConfigDocument doc = load("exp.yaml", {"model.n_layers=3"});
  EXPECT_EQ(doc.origin_of("model.hidden_dim"), shown("model.yaml") + ":3");
  EXPECT_EQ(doc.origin_of("train.batch_size"), shown("exp.yaml") + ":5");
  EXPECT_EQ(doc.origin_of("train.seq_len"), shown("model.yaml") + ":10");
  EXPECT_EQ(doc.origin_of("model.n_layers"),
            "command-line override 'model.n_layers=3' (argument 3)");
  EXPECT_EQ(doc.origin_of("train.grad_clip"), "default");
  EXPECT_EQ(doc.origin_of("train.steps"),
            shown("exp.yaml") + ":2, via ${vars.steps} at " + shown("exp.yaml") + ":4");

  const RunConfig cfg = resolve_config(doc, test::registry());
  bool saw_default_norm = false;
  for (const ValueOrigin& o : value_origins(cfg, doc)) {
    if (o.path == "model.norm.type") {
      saw_default_norm = true;
      EXPECT_EQ(o.value, "rmsnorm");
      EXPECT_EQ(o.origin, "default");
    }
    if (o.path == "train.steps") EXPECT_EQ(o.value, "40");
  }
  EXPECT_TRUE(saw_default_norm);
}

TEST_F(ConfigCompose, RelativePluginPathsFollowTheFileThatSetsThem) {
  write("model.yaml", kModel);
  write("shared/plugins.yaml", "plugin_paths: [extra]\n");
  write("exp.yaml", "include: [model.yaml, shared/plugins.yaml]\n");
  const std::vector<fs::path> paths = load("exp.yaml").plugin_paths();
  ASSERT_EQ(paths.size(), 1u);
  EXPECT_EQ(paths[0], fs::absolute(dir_ / "shared" / "extra").lexically_normal());
}

}  // namespace
}  // namespace nnkit
