// Purpose: bad input is refused with a non-zero exit code and a message that says what and where:
// YAML syntax, unknown keys, types, ranges, plugin names, data files, sampler flags, prompt and
// output lengths, unwritable run directories, resuming nothing.
#include <algorithm>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

class BadInput : public CliTest {
 protected:
  // tiny.yaml with `from` replaced by `to` (which must occur once), written as `name`.
  fs::path variant(const std::string& name, const std::string& from, const std::string& to) {
    std::string text = tiny_config_yaml();
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    EXPECT_EQ(text.find(from, at + 1), std::string::npos) << from << " occurs twice";
    text.replace(at, from.size(), to);
    return write(name, text);
  }
  RunResult validate(const fs::path& config) { return run_nnkit({"validate", config.string()}); }
  RunResult generate(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"generate", config_.string(), "--random-init"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_nnkit(args);
  }
};

TEST_F(BadInput, YamlSyntaxErrorNamesFileLineAndColumn) {
  const fs::path config = write("broken.yaml", "seed: 1\nmodel:\n  hidden_dim: [1, 2\n");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "YAML syntax error");
  EXPECT_MENTIONS(r.err, "broken.yaml:4:1");
}

TEST_F(BadInput, UnknownKeySuggestsTheNearestKey) {
  const fs::path config = variant("typo.yaml", "top_k: 2,", "top_kk: 2,");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "unknown key 'top_kk'");
  EXPECT_MENTIONS(r.err, "model.moe.router");
  EXPECT_MENTIONS(r.err, "did you mean 'top_k'?");
  EXPECT_MENTIONS(r.err, "typo.yaml:16:");  // the line of the router
  // The same in a top-level section.
  const fs::path top = variant("typo2.yaml", "  eval_every: 5", "  eval_evry: 5");
  const RunResult t = validate(top);
  EXPECT_EXIT_CODE(t, 2);
  EXPECT_MENTIONS(t.err, "unknown key 'eval_evry' in train");
  EXPECT_MENTIONS(t.err, "did you mean 'eval_every'?");
}

TEST_F(BadInput, WrongTypeNamesTheKeyAndPosition) {
  const fs::path config = variant("type.yaml", "hidden_dim: 32", "hidden_dim: lots");
  const RunResult r = validate(config);
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "model.hidden_dim");
  EXPECT_MENTIONS(r.err, "integer");
  EXPECT_MENTIONS(r.err, "'lots'");
  EXPECT_MENTIONS(r.err, "type.yaml:5:");
}

TEST_F(BadInput, TopKAboveTheNumberOfExperts) {
  std::string text = tiny_config_yaml();
  text.replace(text.find("top_k: 2,"), 9, "top_k: 20,");
  text.replace(text.find("n_experts: 4"), 12, "n_experts: 16");
  const RunResult r = validate(write("topk.yaml", text));
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "[moe/topk]");
  EXPECT_MENTIONS(r.err, "top_k (20)");
  EXPECT_MENTIONS(r.err, "n_experts (16)");
}

TEST_F(BadInput, HeadsNotDivisibleByKvHeads) {
  const RunResult r = validate(variant("heads.yaml", "n_kv_heads: 2", "n_kv_heads: 3"));
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "[attention/mqa]");
  EXPECT_MENTIONS(r.err, "n_heads (4) is not divisible by n_kv_heads (3)");
}

TEST_F(BadInput, NegativeSize) {
  const RunResult r = validate(variant("neg.yaml", "hidden_dim: 32", "hidden_dim: -32"));
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "model.hidden_dim = -32 is out of range");
  EXPECT_MENTIONS(r.err, ">= 1");
  // A bad override is reported against the command line.
  const RunResult o = run_nnkit({"validate", config_.string(), "train.batch_size=-1"});
  EXPECT_EXIT_CODE(o, 2);
  EXPECT_MENTIONS(o.err, "train.batch_size");
  EXPECT_MENTIONS(o.err, "command-line override");
}

TEST_F(BadInput, SizesWhoseCountsOverflowAreRefusedNotWrapped) {
  // 2^40 x 2^40 embedding entries do not fit in 64 bits: validate and train must say so (exit 2)
  // instead of printing a wrapped-around count or crashing in an allocation.
  const std::vector<std::string> huge = {"model.hidden_dim=1099511627776",
                                         "model.vocab_size=1099511627776"};
  std::vector<std::string> validate_args = {"validate", config_.string()};
  std::vector<std::string> train_args = {"train",          config_.string(), "--data",
                                         tokens_.string(), "--out",          path("run").string()};
  validate_args.insert(validate_args.end(), huge.begin(), huge.end());
  train_args.insert(train_args.end(), huge.begin(), huge.end());
  for (const auto& args : {validate_args, train_args}) {
    const RunResult r = run_nnkit(args);
    EXPECT_EXIT_CODE(r, 2);
    EXPECT_MENTIONS(r.err, "does not fit in 64 bits");
  }
}

TEST_F(BadInput, UnknownPluginListsTheAvailableOnes) {
  const RunResult r =
      validate(variant("plugin.yaml", "{type: swiglu, n_experts", "{type: swigluu, n_experts"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "unknown moe plugin 'swigluu'");
  EXPECT_MENTIONS(r.err, "model.moe.experts.type");
  EXPECT_MENTIONS(r.err, "available moe plugins:");
  EXPECT_MENTIONS(r.err, "swiglu");
}

TEST_F(BadInput, MissingDataFile) {
  const fs::path missing = path("nowhere.tokens");
  const RunResult r = run_nnkit(
      {"train", config_.string(), "--data", missing.string(), "--out", path("run").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "nowhere.tokens");
  EXPECT_MENTIONS(r.err, "no such file");
  EXPECT_FALSE(fs::exists(path("run") / "metrics.jsonl"));
  const RunResult e =
      run_nnkit({"eval", config_.string(), "--random-init", "--data", missing.string()});
  EXPECT_NE(e.exit_code, 0);
  EXPECT_MENTIONS(e.err, "nowhere.tokens does not exist");
  // Training with no data at all says how to make some.
  const RunResult none = run_nnkit({"train", config_.string(), "--out", path("run2").string()});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_MENTIONS(none.err, "no training data");
  EXPECT_MENTIONS(none.err, "nnkit data prepare");
}

TEST_F(BadInput, EmptyDataFile) {
  const fs::path empty = write("empty.tokens", "");
  const RunResult r = run_nnkit(
      {"train", config_.string(), "--data", empty.string(), "--out", path("run").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "empty.tokens");
  EXPECT_MENTIONS(r.err, "empty");
  const fs::path empty_text = write("empty.txt", "");
  const RunResult e =
      run_nnkit({"eval", config_.string(), "--random-init", "--data", empty_text.string()});
  EXPECT_NE(e.exit_code, 0);
  EXPECT_MENTIONS(e.err, "empty.txt is empty");
}

TEST_F(BadInput, DataSmallerThanOneTrainingWindow) {
  const fs::path text = write("short.txt", "Hi there.");
  const fs::path tokens = path("short.tokens");
  ASSERT_EXIT_CODE(run_nnkit({"data", "prepare", text.string(), "-o", tokens.string()}), 0);
  const RunResult r = run_nnkit(
      {"train", config_.string(), "--data", tokens.string(), "--out", path("run").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "short.tokens");
  EXPECT_MENTIONS(r.err, "of 10");             // the file's size in tokens (9 bytes + EOS)
  EXPECT_MENTIONS(r.err, "seq_len + 1 = 17");  // what one window needs
  EXPECT_FALSE(fs::exists(path("run") / "checkpoints"));
}

TEST_F(BadInput, InvalidSamplerFlags) {
  const RunResult p = generate({"--prompt", "The", "--top-p", "1.5"});
  EXPECT_EXIT_CODE(p, 2);
  EXPECT_MENTIONS(p.err, "[decode/top_p]");
  EXPECT_MENTIONS(p.err, "1.5 is out of range");
  const RunResult k = generate({"--prompt", "The", "--top-k", "0"});
  EXPECT_EXIT_CODE(k, 2);
  EXPECT_MENTIONS(k.err, "[decode/top_k]");
  EXPECT_MENTIONS(k.err, "k = 0 is out of range");
  const RunResult t = generate({"--prompt", "The", "--temperature", "-1"});
  EXPECT_EXIT_CODE(t, 2);
  EXPECT_MENTIONS(t.err, "[decode/temperature]");
  EXPECT_MENTIONS(t.err, "-1 is out of range");
  const RunResult g = generate({"--prompt", "The", "--greedy", "--top-k", "5"});
  EXPECT_EXIT_CODE(g, 2);
  EXPECT_MENTIONS(g.err, "--greedy");
  const RunResult n = generate({"--prompt", "The", "--top-p", "lots"});
  EXPECT_EXIT_CODE(n, 2);
  EXPECT_MENTIONS(n.err, "lots");
}

TEST_F(BadInput, PromptLongerThanTheContext) {
  const std::string prompt = "The old lighthouse keeper climbed the spiral stairs every evening.";
  const RunResult r = generate({"--prompt", prompt, "--max-new-tokens", "4"});
  EXPECT_EXIT_CODE(r, 2);
  // BOS + the prompt's bytes, against max_seq_len 32.
  EXPECT_MENTIONS(r.err, "has " + std::to_string(prompt.size() + 1) + " tokens");
  EXPECT_MENTIONS(r.err, "context of 32");
  EXPECT_MENTIONS(r.err, "--truncate-prompt");
  // --truncate-prompt keeps the end of the prompt instead.
  const RunResult t =
      generate({"--prompt", prompt, "--max-new-tokens", "4", "--truncate-prompt", "--json"});
  EXPECT_EXIT_CODE(t, 0);
}

TEST_F(BadInput, MaxNewTokensBeyondTheContext) {
  const RunResult r = generate({"--prompt", "The", "--max-new-tokens", "100"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "--max-new-tokens 100");
  EXPECT_MENTIONS(r.err, "context of 32");
}

TEST_F(BadInput, UnwritableOutFailsBeforeTraining) {
  const fs::path file = write("a-regular-file", "not a directory\n");
  const fs::path out = file / "run";
  const RunResult r =
      run_nnkit({"train", config_.string(), "--data", tokens_.string(), "--out", out.string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, out.string());
  EXPECT_MENTIONS(r.err, "Not a directory");
  EXPECT_EQ(r.err.find("step 1/"), std::string::npos) << "training started:\n" << r.err;
  EXPECT_EQ(r.err.find("training "), std::string::npos) << "training started:\n" << r.err;
}

TEST_F(BadInput, ResumeWithoutACheckpoint) {
  const fs::path run = path("empty-run");
  fs::create_directories(run);
  const RunResult r = run_nnkit({"train", "--resume", run.string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "no complete checkpoint");
  EXPECT_MENTIONS(r.err, run.string());
  const RunResult c =
      run_nnkit({"train", config_.string(), "--resume", run.string(), "--data", tokens_.string()});
  EXPECT_NE(c.exit_code, 0);
  EXPECT_MENTIONS(c.err, "no complete checkpoint");
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl")) << "a fresh run was started";
  const RunResult missing = run_nnkit({"train", "--resume", path("no-such-run").string()});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_MENTIONS(missing.err, "does not exist");
}

TEST_F(BadInput, DataPrepareMissingInputIsNamed) {
  const RunResult r = run_nnkit({"data", "prepare", corpus_.string(), path("absent.txt").string(),
                                 "-o", path("out.tokens").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "absent.txt");
  EXPECT_MENTIONS(r.err, "does not exist");
  EXPECT_FALSE(fs::exists(path("out.tokens")));
  const RunResult no_output = run_nnkit({"data", "prepare", corpus_.string()});
  EXPECT_EXIT_CODE(no_output, 2);
  EXPECT_MENTIONS(no_output.err, "-o FILE");
}

}  // namespace
}  // namespace nnkit::clitest
