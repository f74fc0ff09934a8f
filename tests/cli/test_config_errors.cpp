// Purpose: what `nnkit validate` prints for YAML the config layer refuses on top of yaml-cpp
// (duplicate keys, merge keys, deep nesting, tabs), for bad command-line overrides and for errors
// in included files: exit code 2 and a message that points at the file position or at the
// override argument, never at the wrong one; and what `--show-origin` says about each value.
#include <algorithm>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

class ConfigErrors : public ::testing::Test {
 protected:
  // tiny_config_yaml() with `line` inserted after the first line equal to `after`.
  fs::path config_with(const std::string& after, const std::string& line) {
    std::string text = tiny_config_yaml();
    const size_t at = text.find(after + "\n");
    EXPECT_NE(at, std::string::npos) << after;
    text.insert(at + after.size() + 1, line + "\n");
    const fs::path file = dir_ / "my.yaml";
    write_text(file, text);
    return file;
  }
  RunResult validate(const fs::path& config, const std::vector<std::string>& overrides = {}) {
    std::vector<std::string> args = {"validate", config.string()};
    args.insert(args.end(), overrides.begin(), overrides.end());
    return run_nnkit(args);
  }
  fs::path plain_config() {
    const fs::path file = dir_ / "tiny.yaml";
    write_text(file, tiny_config_yaml());
    return file;
  }

  TempDir dir_;
};

TEST_F(ConfigErrors, TheUnchangedConfigValidates) {
  EXPECT_EXIT_CODE(validate(plain_config()), 0);
}

TEST_F(ConfigErrors, DuplicateKeyInTheFileNamesBothPositions) {
  const fs::path config = config_with("    n_heads: 4", "    n_heads: 8");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "[config] duplicate key 'n_heads' in model.attention at " +
                             config.string() + ":12:5 (first at " + config.string() +
                             ":11:5); keep one");
}

TEST_F(ConfigErrors, DuplicateKeyInAnOverrideNamesTheArgument) {
  const RunResult r = validate(plain_config(), {"backend={type: cpu, type: cuda}"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err,
                  "duplicate key 'type' in backend at command-line override "
                  "'backend={type: cpu, type: cuda}' (argument 3), column 21 (first at column "
                  "10); keep one");
}

TEST_F(ConfigErrors, MergeKeysAreRefusedAsUnsupported) {
  const fs::path config = config_with("    n_kv_heads: 2", "    <<: {head_dim: 8}");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "merge keys (<<) are not supported at " + config.string() +
                             ":13:5; write the keys out");
}

TEST_F(ConfigErrors, DeepNestingSaysSoInsteadOfBadFile) {
  const fs::path config = config_with("backend: {type: cpu, threads: 1}",
                                      "junk: " + std::string(3000, '[') + std::string(3000, ']'));
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "nesting deeper than 64 levels at " + config.string() + ":19:");
  EXPECT_EQ(r.err.find("bad file"), std::string::npos) << r.err;
}

TEST_F(ConfigErrors, ATabInIndentationGetsAHint) {
  const fs::path config = config_with("  hidden_dim: 32", "\tn_layers: 2");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "tab character in indentation at " + config.string() +
                             ":6:1; YAML indents with spaces");
}

TEST_F(ConfigErrors, AWrongOverrideValueIsReportedAtTheOverrideNotTheFile) {
  const fs::path config = plain_config();
  const RunResult r = validate(config, {"train.steps=5", "model.n_layers=abc"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err,
                  "model.n_layers expects integer, got 'abc' (at command-line override "
                  "'model.n_layers=abc' (argument 4))");
  EXPECT_EQ(r.err.find(config.string() + ":"), std::string::npos) << r.err;
}

TEST_F(ConfigErrors, OverrideKeysWithATrailingDotOrAnEmptySegmentAreRefused) {
  const fs::path config = plain_config();
  const RunResult trailing = validate(config, {"model.n_layers.=4"});
  EXPECT_EXIT_CODE(trailing, 2);
  EXPECT_MENTIONS(trailing.err,
                  "command-line override 'model.n_layers.=4' (argument 3): the key "
                  "'model.n_layers.' ends with a dot");
  const RunResult empty = validate(config, {"model..x=1"});
  EXPECT_EXIT_CODE(empty, 2);
  EXPECT_MENTIONS(empty.err, "the key 'model..x' has an empty segment (two dots in a row)");
}

TEST_F(ConfigErrors, ACrossKeyCheckNamesTheOverrideThatChangedTheOtherKey) {
  const fs::path config = plain_config();
  const RunResult r = validate(config, {"model.attention.n_kv_heads=3"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err,
                  "model.attention.n_kv_heads was set by command-line override "
                  "'model.attention.n_kv_heads=3' (argument 3)");
}

// The line of `text` that starts with `start` ("" when there is none).
std::string line_starting(const std::string& text, const std::string& start) {
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = std::min(text.find('\n', at), text.size());
    if (text.compare(at, start.size(), start) == 0) return text.substr(at, end - at);
    at = end + 1;
  }
  return "";
}

TEST_F(ConfigErrors, AnErrorInAnIncludedFileNamesThatFileAndPosition) {
  std::string base_text = tiny_config_yaml();
  base_text.replace(base_text.find("head_dim: 8"), 11, "head_dim: eight");
  const fs::path base = dir_ / "base.yaml";
  write_text(base, base_text);
  const fs::path config = dir_ / "exp.yaml";
  write_text(config, "include: base.yaml\nseed: 5\n");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "model.attention.head_dim expects integer, got 'eight' (at " +
                             base.string() + ":13:15)");
}

TEST_F(ConfigErrors, ShowOriginNamesTheIncludedFileTheReferenceTheOverrideAndTheDefault) {
  const fs::path base = dir_ / "base.yaml";
  write_text(base, tiny_config_yaml());
  const fs::path config = dir_ / "exp.yaml";
  write_text(config, "include: base.yaml\nvars: {steps: 7}\ntrain:\n  steps: ${vars.steps}\n");
  const RunResult r = validate(config, {"model.n_layers=1", "--show-origin"});
  EXPECT_EXIT_CODE(r, 0);
  const std::string vocab = line_starting(r.out, "model.vocab_size:");
  EXPECT_MENTIONS(vocab, " 260 ");
  EXPECT_MENTIONS(vocab, "# " + base.string() + ":4");
  EXPECT_MENTIONS(line_starting(r.out, "model.n_layers:"),
                  "# command-line override 'model.n_layers=1' (argument 3)");
  const std::string steps = line_starting(r.out, "train.steps:");
  EXPECT_MENTIONS(steps, " 7 ");
  EXPECT_MENTIONS(steps,
                  "# " + config.string() + ":2, via ${vars.steps} at " + config.string() + ":4");
  EXPECT_MENTIONS(line_starting(r.out, "train.val_fraction:"), "# default");
  EXPECT_EQ(line_starting(r.out, "vars"), "");  // only referenced, not a setting
}

}  // namespace
}  // namespace nnkit::clitest
