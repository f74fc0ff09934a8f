// Purpose: the YAML rules nnkit adds to yaml-cpp (config/yaml_rules.h) and the messages of
// command-line overrides: duplicate keys (block and flow, any depth, file and override values),
// merge keys, bounded nesting, tab hints, malformed override keys, and cross-key checks that name
// the override which changed one of the keys.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nnkit/config.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

const char* kTinyMoe = R"(seed: 7
model:
  vocab_size: 260
  hidden_dim: 32
  n_layers: 2
  max_seq_len: 64
  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8}
  moe:
    router:
      type: topk
      top_k: 2
    experts: {type: swiglu, n_experts: 4, ffn_dim: 16}
train: {seq_len: 32}
)";

// The message of the ConfigError that parsing `text` as "tiny.yaml" throws ("" and a test
// failure when it parses).
std::string parse_error(const std::string& text) {
  try {
    ConfigDocument::parse(text, "tiny.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for:\n" << text;
  return "";
}

// The message of the UsageError that applying `assignment` (as argument 3) throws.
std::string override_error(const std::string& assignment) {
  ConfigDocument doc = ConfigDocument::parse(kTinyMoe, "tiny.yaml");
  try {
    doc.apply_override(assignment, 3);
  } catch (const UsageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for " << assignment;
  return "";
}

// The message of the ConfigError that resolving kTinyMoe with `overrides` throws.
std::string resolve_error(const std::vector<std::string>& overrides) {
  ConfigDocument doc = ConfigDocument::parse(kTinyMoe, "tiny.yaml");
  int argument = 3;
  for (const std::string& o : overrides) doc.apply_override(o, argument++);
  try {
    resolve_config(doc, test::registry());
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

std::string insert_after(std::string text, const std::string& anchor, const std::string& line) {
  const size_t at = text.find(anchor);
  EXPECT_NE(at, std::string::npos) << anchor;
  return text.insert(at + anchor.size(), line);
}

TEST(ConfigStrict, TheTinyConfigParses) {
  EXPECT_NO_THROW(resolve_config(ConfigDocument::parse(kTinyMoe, "tiny.yaml"), test::registry()));
}

TEST(ConfigStrict, DuplicateKeyInANestedBlockMapNamesBothPositions) {
  const std::string text = insert_after(kTinyMoe, "      top_k: 2\n", "      top_k: 3\n");
  EXPECT_EQ(parse_error(text),
            "[config] duplicate key 'top_k' in model.moe.router at tiny.yaml:12:7 (first at "
            "tiny.yaml:11:7); keep one");
}

TEST(ConfigStrict, DuplicateKeyInAFlowMap) {
  const std::string text = insert_after(kTinyMoe, "n_kv_heads: 1,", " n_heads: 2,");
  EXPECT_EQ(parse_error(text),
            "[config] duplicate key 'n_heads' in model.attention at tiny.yaml:7:53 (first at "
            "tiny.yaml:7:26); keep one");
}

TEST(ConfigStrict, DuplicateKeyAtTheTopLevelAndInsideLists) {
  EXPECT_EQ(parse_error("seed: 1\nseed: 2\n"),
            "[config] duplicate key 'seed' in the top level at tiny.yaml:2:1 (first at "
            "tiny.yaml:1:1); keep one");
  EXPECT_EQ(parse_error("decode:\n  - {type: top_k, k: 5, k: 6}\n"),
            "[config] duplicate key 'k' in decode[0] at tiny.yaml:2:25 (first at tiny.yaml:2:19); "
            "keep one");
}

TEST(ConfigStrict, EqualValuesUnderDifferentParentsAreNoDuplicates) {
  EXPECT_NO_THROW(ConfigDocument::parse("a: {type: x}\nb: {type: x}\nc: ['<<']\n", "tiny.yaml"));
}

TEST(ConfigStrict, DuplicateKeyInAnOverrideValueIsReportedAtTheOverride) {
  EXPECT_EQ(override_error("backend={type: cpu, type: cuda}"),
            "[config] duplicate key 'type' in backend at command-line override "
            "'backend={type: cpu, type: cuda}' (argument 3), column 21 (first at column 10); "
            "keep one");
  EXPECT_EQ(override_error("model.moe={router: {top_k: 1, top_k: 2}}"),
            "[config] duplicate key 'top_k' in model.moe.router at command-line override "
            "'model.moe={router: {top_k: 1, top_k: 2}}' (argument 3), column 31 (first at column "
            "21); keep one");
}

TEST(ConfigStrict, MergeKeysAreRefused) {
  const std::string text =
      "base: &base {type: mqa, n_heads: 4}\nmodel:\n  attention:\n    <<: *base\n";
  EXPECT_EQ(parse_error(text),
            "[config] merge keys (<<) are not supported at tiny.yaml:4:5; write the keys out");
  EXPECT_NE(override_error("model.attention={<<: {n_heads: 4}}")
                .find("merge keys (<<) are not "
                      "supported"),
            std::string::npos);
  // A quoted "<<" is an ordinary string key, not a merge.
  EXPECT_NO_THROW(ConfigDocument::parse("a: {'<<': 1}\n", "tiny.yaml"));
}

std::string nested_lists(int depth) {
  return "a: " + std::string(static_cast<size_t>(depth), '[') +
         std::string(static_cast<size_t>(depth), ']') + "\n";
}

TEST(ConfigStrict, NestingIsBoundedAt64Levels) {
  // The top-level mapping is level 1.
  EXPECT_NO_THROW(ConfigDocument::parse(nested_lists(63), "tiny.yaml"));
  EXPECT_EQ(parse_error(nested_lists(64)),
            "[config] nesting deeper than 64 levels at tiny.yaml:1:67");
  // Far past yaml-cpp's own bound (which says only "bad file").
  const std::string deep = parse_error(nested_lists(5000));
  EXPECT_NE(deep.find("nesting deeper than 64 levels at tiny.yaml:1:"), std::string::npos) << deep;
  std::string block;
  for (int i = 0; i < 70; ++i) block += std::string(static_cast<size_t>(2 * i), ' ') + "k:\n";
  EXPECT_EQ(parse_error(block), "[config] nesting deeper than 64 levels at tiny.yaml:65:129");
}

TEST(ConfigStrict, AliasesThatExpandBeyondABoundAreRefused) {
  // Nine levels of ten aliases: 10^9 values from a few hundred bytes.
  std::string text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int level = 1; level < 9; ++level) {
    // Appends rather than "literal" + std::string: GCC 12 warns falsely (-Wrestrict) on those.
    const std::string below = std::string("*a").append(std::to_string(level - 1));
    const std::string name = std::to_string(level);
    text.append("a").append(name).append(": &a").append(name).append(" [");
    for (int i = 0; i < 10; ++i) text.append(i == 0 ? "" : ", ").append(below);
    text += "]\n";
  }
  const std::string message = parse_error(text);
  EXPECT_NE(message.find("the document expands to more than 1048576 values"), std::string::npos)
      << message;
  // A few aliases are fine.
  EXPECT_NO_THROW(ConfigDocument::parse("a: &a {x: 1}\nb: *a\nc: *a\n", "tiny.yaml"));
}

TEST(ConfigStrict, NestingInOverridesCountsTheKeyPath) {
  std::string key = "a";
  for (int i = 0; i < 70; ++i) key += ".a";
  EXPECT_NE(override_error(key + "=1")
                .find("nesting deeper than 64 levels in command-line "
                      "override"),
            std::string::npos);
  EXPECT_NE(override_error("model.x=" + nested_lists(63).substr(3)).find("nesting deeper than 64"),
            std::string::npos);
}

TEST(ConfigStrict, ATabInIndentationGetsAHint) {
  EXPECT_EQ(parse_error("seed: 1\nmodel:\n\tvocab_size: 260\n"),
            "[config] tab character in indentation at tiny.yaml:3:1; YAML indents with spaces "
            "(yaml-cpp: illegal map value)");
  const std::string after_spaces = parse_error("model:\n  vocab_size: 260\n  \thidden_dim: 3\n");
  EXPECT_EQ(after_spaces.rfind("[config] tab character in indentation at tiny.yaml:3:3; YAML "
                               "indents with spaces",
                               0),
            0u)
      << after_spaces;
  // Other syntax errors keep yaml-cpp's words.
  EXPECT_EQ(parse_error("model:\n  hidden_dim: [1, 2\n")
                .rfind("[config] YAML syntax error at "
                       "tiny.yaml:",
                       0),
            0u);
}

TEST(ConfigStrict, OverrideKeysWithEmptySegmentsAreRefused) {
  EXPECT_EQ(override_error("model.n_layers.=4"),
            "[config] command-line override 'model.n_layers.=4' (argument 3): the key "
            "'model.n_layers.' ends with a dot; keys are names joined by single dots "
            "(model.n_layers=2)");
  EXPECT_NE(override_error("model..x=1").find("the key 'model..x' has an empty segment"),
            std::string::npos);
  EXPECT_NE(override_error(".seed=1").find("the key '.seed' starts with a dot"), std::string::npos);
}

TEST(ConfigStrict, OverrideValueErrorsNameTheArgument) {
  EXPECT_EQ(resolve_error({"model.n_layers=abc"}),
            "[config] model.n_layers expects integer, got 'abc' (at command-line override "
            "'model.n_layers=abc' (argument 3))");
  EXPECT_EQ(override_error("model.n_layers=[1"),
            "[config] YAML syntax error at command-line override 'model.n_layers=[1' (argument "
            "3), column 16: end of sequence flow not found");
}

TEST(ConfigStrict, CrossKeyChecksNameTheOverrideThatChangedTheOtherKey) {
  EXPECT_EQ(resolve_error({"model.attention.n_kv_heads=3"}),
            "[attention/mqa] model.attention.n_heads (4) is not divisible by n_kv_heads (3) (at "
            "tiny.yaml:7:35); model.attention.n_kv_heads was set by command-line override "
            "'model.attention.n_kv_heads=3' (argument 3)");
  EXPECT_EQ(resolve_error({"model.max_seq_len=16"}),
            "[config] train.seq_len (32) exceeds model.max_seq_len (16) (at tiny.yaml:13:18); "
            "model.max_seq_len was set by command-line override 'model.max_seq_len=16' "
            "(argument 3)");
}

TEST(ConfigStrict, AnOverrideOfAMappingReplacesTheOriginOfEarlierOnesBelowIt) {
  // `model=...` replaces the whole mapping, model.n_layers=3 included: an error in the new
  // model.n_layers belongs to the later override.
  const std::string message =
      resolve_error({"model.n_layers=3",
                     "model={vocab_size: 260, hidden_dim: 32, n_layers: x, max_seq_len: 64}"});
  EXPECT_NE(message.find("n_layers expects integer, got 'x' (at command-line override 'model={"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("(argument 4)"), std::string::npos) << message;
}

}  // namespace
}  // namespace nnkit
