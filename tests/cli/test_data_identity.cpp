// Purpose: data identity end to end: token files record the tokenizer that made them and
// train/eval refuse data from another one (--allow-tokenizer-mismatch uses it anyway), old
// (format 1) files still train with a note, an output path equal to an input is refused by data
// prepare, tokenizer train and convert, and an empty corpus for `tokenizer train` gets a message
// of its own instead of SentencePiece's assertion text.
#include <fstream>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

class DataIdentity : public CliTest {
 protected:
  // Trains a SentencePiece model (vocab 400) on `text` into PREFIX.model and returns a config
  // using it; skips the test when the SentencePiece plugins are not built.
  fs::path sentencepiece_config(const std::string& name, const std::string& text) {
    const fs::path corpus = write(name + ".txt", text);
    const RunResult r = run_nnkit(
        {"tokenizer", "train", corpus.string(), "-o", path(name).string(), "--vocab-size", "400"});
    if (r.exit_code != 0 && r.err.find("not found") != std::string::npos) {
      return {};
    }
    EXPECT_EXIT_CODE(r, 0);
    std::string yaml = tiny_config_yaml();
    auto replace = [&](const std::string& from, const std::string& to) {
      const size_t at = yaml.find(from);
      EXPECT_NE(at, std::string::npos) << from;
      yaml.replace(at, from.size(), to);
    };
    replace("vocab_size: 260", "vocab_size: 400");
    replace("tokenizer: {type: byte}",
            "tokenizer: {type: sentencepiece, model: " + path(name + ".model").string() + "}");
    return write(name + ".yaml", yaml);
  }
};

TEST_F(DataIdentity, TrainAndEvalRefuseDataFromAnotherTokenizer) {
  const fs::path sp = sentencepiece_config("sp", english_corpus());
  if (sp.empty()) GTEST_SKIP() << "tokenizer/sentencepiece is not built";
  // corpus.tokens came from tokenizer/byte.
  const RunResult train =
      run_nnkit({"train", sp.string(), "--data", tokens_.string(), "--out", path("run").string()});
  EXPECT_EXIT_CODE(train, 1);
  EXPECT_MENTIONS(train.err, "was made by tokenizer/byte (vocab 260)");
  EXPECT_MENTIONS(train.err,
                  "the model's tokenizer is tokenizer/sentencepiece (vocab 400, model "
                  "crc32c:");
  EXPECT_MENTIONS(train.err, "nnkit data prepare INPUT... -o FILE --config CONFIG");
  EXPECT_MENTIONS(train.err, "--allow-tokenizer-mismatch");
  EXPECT_FALSE(fs::exists(path("run")));
  const RunResult eval =
      run_nnkit({"eval", sp.string(), "--random-init", "--data", tokens_.string()});
  EXPECT_EXIT_CODE(eval, 1);
  EXPECT_MENTIONS(eval.err, "was made by tokenizer/byte");

  // The flag uses it anyway, with a warning.
  const RunResult allowed =
      run_nnkit({"train", sp.string(), "--data", tokens_.string(), "--out", path("run").string(),
                 "--allow-tokenizer-mismatch", "train.steps=2"});
  EXPECT_EXIT_CODE(allowed, 0);
  EXPECT_MENTIONS(allowed.err, "used anyway");

  // Data prepared with the model's own tokenizer trains without a word about it.
  const fs::path sp_tokens = path("sp.tokens");
  ASSERT_EXIT_CODE(run_nnkit({"data", "prepare", corpus_.string(), "-o", sp_tokens.string(),
                              "--config", sp.string()}),
                   0);
  const RunResult same = run_nnkit(
      {"eval", sp.string(), "--random-init", "--data", sp_tokens.string(), "--max-tokens", "50"});
  EXPECT_EXIT_CODE(same, 0);
  EXPECT_EQ(same.err.find("tokenizer"), std::string::npos) << same.err;

  // Another SentencePiece model of the same size: the model file's hash tells them apart.
  const fs::path other = sentencepiece_config(
      "other", english_corpus() + english_corpus() + "Zebras quietly juggle pixels.\n");
  const RunResult swapped =
      run_nnkit({"eval", other.string(), "--random-init", "--data", sp_tokens.string()});
  EXPECT_EXIT_CODE(swapped, 1);
  EXPECT_MENTIONS(swapped.err, "was made by tokenizer/sentencepiece (vocab 400, model crc32c:");
}

TEST_F(DataIdentity, FormatOneTokenFilesStillTrainWithANote) {
  // A format-2 file made format 1: version field 1 and the tokenizer record cut off (the
  // payload's checksum does not cover it).
  std::string raw = read_text(tokens_);
  ASSERT_EQ(raw.substr(0, 8), "NNKTOK01");
  ASSERT_EQ(raw[8], 2);
  uint64_t count = 0;
  for (int i = 7; i >= 0; --i) count = count << 8 | static_cast<unsigned char>(raw[16 + i]);
  raw[8] = 1;
  raw.resize(32 + 2 * count);
  const fs::path old = path("old.tokens");
  write_text(old, raw);
  const RunResult r = run_nnkit({"train", config_.string(), "--data", old.string(), "--out",
                                 path("run").string(), "train.steps=2"});
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "(format 1) does not record its tokenizer");
}

TEST_F(DataIdentity, OutputEqualToAnInputIsRefused) {
  const std::string before = read_text(corpus_);
  const RunResult prepare =
      run_nnkit({"data", "prepare", corpus_.string(), "-o", corpus_.string()});
  EXPECT_EXIT_CODE(prepare, 2);
  EXPECT_MENTIONS(prepare.err, "names the input " + corpus_.string());
  // The same file through another spelling of its path.
  const fs::path other_spelling = dir_.path() / "." / "corpus.txt";
  const RunResult dotted =
      run_nnkit({"data", "prepare", corpus_.string(), "-o", other_spelling.string()});
  EXPECT_EXIT_CODE(dotted, 2);
  EXPECT_EQ(read_text(corpus_), before) << "the input was overwritten";

  const fs::path model = write("x.model", "not yet a model\n");
  const RunResult tok = run_nnkit(
      {"tokenizer", "train", model.string(), "-o", path("x").string(), "--vocab-size", "300"});
  EXPECT_EXIT_CODE(tok, 2);
  EXPECT_MENTIONS(tok.err, "x.model (written for -o");
  EXPECT_EQ(read_text(model), "not yet a model\n");

  for (const char* action : {"import-hf", "export-hf"}) {
    const RunResult convert =
        run_nnkit({"convert", action, dir_.path().string(), "-o", dir_.path().string()});
    EXPECT_EXIT_CODE(convert, 2);
    EXPECT_MENTIONS(convert.err, "names the input");
  }
}

TEST_F(DataIdentity, EmptyCorpusForTokenizerTrainSaysSo) {
  const fs::path empty = write("empty.txt", "");
  const fs::path blank = write("blank.txt", "\n  \n\t\n");
  const RunResult r = run_nnkit({"tokenizer", "train", empty.string(), blank.string(), "-o",
                                 path("sp").string(), "--vocab-size", "300"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "the input files hold no text");
  EXPECT_MENTIONS(r.err, "empty.txt: 0 bytes");
  EXPECT_EQ(r.err.find("sentences_"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace nnkit::clitest
