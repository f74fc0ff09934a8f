// Purpose: tokenizer_trainer/sentencepiece and tokenizer/sentencepiece: training on a small
// English text, the special ids, exact round trips of any UTF-8 text (byte fallback, no
// normalisation) and the refusal of text that is not UTF-8,
// clear errors for missing or broken model files, and tokenizer.model travelling with HF folders.
#include <gtest/gtest.h>

#include <fstream>

#include "hf_test_util.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/tokenizer.h"
#include "nnkit/tokenizer_trainer.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

namespace fs = std::filesystem;

// A few thousand lines of plain English, deterministic.
std::string english_text() {
  const char* subjects[] = {"The old sailor", "A curious child",    "My neighbour",   "The teacher",
                            "Every gardener", "The quiet engineer", "Our small town", "The river"};
  const char* verbs[] = {"remembers", "carries", "watches", "builds",
                         "forgets",   "paints",  "follows", "explains"};
  const char* objects[] = {"the morning light", "a story about the sea",   "three green apples",
                           "the long winter",   "every question we asked", "a map of the stars",
                           "the sound of rain", "forty-two paper boats"};
  const char* endings[] = {"before breakfast.",       "without a word.",         "with great care.",
                           "again and again.",        "while the kettle sings.", "in the evening.",
                           "as if nothing happened.", "because it matters."};
  std::string text;
  for (int i = 0; i < 3000; ++i) {
    text += subjects[i % 8];
    text += " ";
    text += verbs[(i / 8) % 8];
    text += " ";
    text += objects[(i / 64) % 8];
    text += " ";
    text += endings[(i * 7 + i / 512) % 8];
    text += (i % 5 == 0) ? " Numbers like " + std::to_string(i * 37) + " appear too.\n" : "\n";
  }
  return text;
}

class SentencePiece : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_text(*dir_ / "corpus.txt", english_text());
    for (const char* type : {"unigram", "bpe"}) {
      TokenizerTrainOptions options;
      options.inputs = {*dir_ / "corpus.txt"};
      options.output_prefix = *dir_ / type;
      options.vocab_size = 400;
      options.model_type = type;
      trainer()->train(options);
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::shared_ptr<TokenizerTrainer> trainer() {
    return create<TokenizerTrainer>("tokenizer_trainer", "sentencepiece");
  }
  static std::shared_ptr<Tokenizer> load(const std::string& type) {
    return create<Tokenizer>("tokenizer", "sentencepiece",
                             {{"model", (*dir_ / (type + ".model")).string()}});
  }
  static TempDir* dir_;
};

TempDir* SentencePiece::dir_ = nullptr;

TEST_F(SentencePiece, TrainingWritesModelAndVocab) {
  for (const char* type : {"unigram", "bpe"}) {
    EXPECT_TRUE(fs::exists(*dir_ / (std::string(type) + ".model"))) << type;
    EXPECT_TRUE(fs::exists(*dir_ / (std::string(type) + ".vocab"))) << type;
  }
}

TEST_F(SentencePiece, SpecialIdsArePadUnkBosEos) {
  for (const char* type : {"unigram", "bpe"}) {
    auto tok = load(type);
    EXPECT_EQ(tok->vocab_size(), 400) << type;
    EXPECT_EQ(tok->pad_id(), 0);
    EXPECT_EQ(tok->unk_id(), 1);
    EXPECT_EQ(tok->bos_id(), 2);
    EXPECT_EQ(tok->eos_id(), 3);
    // Specials carry no text.
    EXPECT_EQ(tok->decode({0, 2, 3}), "");
  }
}

TEST_F(SentencePiece, AnyTextRoundTripsExactly) {
  // The length comes from the array (a hand-counted 27 read past the literal: found by ASan).
  constexpr char kWithNul[] = "bytes \x01\x7f and NUL \0 inside";
  const std::string texts[] = {
      "The old sailor remembers the morning light before breakfast.",
      "  leading spaces,   runs of spaces, and a trailing one ",
      "line one\nline two\n\ttabbed\r\n",
      "naïve café — 日本語 🙂 Ünïcödé",
      "digits 0123456789 and symbols {}[]<>~`|\\",
      std::string(kWithNul, sizeof(kWithNul) - 1),
      "",
  };
  for (const char* type : {"unigram", "bpe"}) {
    auto tok = load(type);
    for (const std::string& text : texts) {
      const std::vector<int32_t> ids = tok->encode(text);
      for (int32_t id : ids) {
        EXPECT_GE(id, 0);
        EXPECT_LT(id, 400);
        EXPECT_NE(id, tok->unk_id()) << type << ": '" << text << "' produced <unk>";
      }
      EXPECT_EQ(tok->decode(ids), text) << type;
    }
    // Common English compresses even with ~100 learned pieces: clearly fewer pieces than bytes.
    const std::string sentence = "The quiet engineer builds a map of the stars in the evening.";
    EXPECT_LT(tok->encode(sentence).size(), sentence.size() * 3 / 4) << type;
  }
}

// SentencePiece turns a byte outside well-formed UTF-8 into U+FFFD before its byte fallback, so
// such text cannot round-trip: encode refuses it, naming the offset and the byte (it used to
// come back as U+FFFD without a word). Well-formed 4-byte sequences still round-trip.
TEST_F(SentencePiece, TextThatIsNotUtf8IsRefusedNamingTheByte) {
  const std::pair<std::string, std::string> bad[] = {
      {"ab\xff"
       "cd",
       "at byte 2 (0xff)"},                      // never valid
      {"x\xc0\xaf", "at byte 1 (0xc0)"},         // overlong '/'
      {"ok \xed\xa0\x80", "at byte 3 (0xed)"},   // a UTF-16 surrogate
      {"\xf4\x90\x80\x80", "at byte 0 (0xf4)"},  // above U+10FFFF
      {"cut \xe6\x97", "at byte 4 (0xe6)"},      // truncated sequence
  };
  for (const char* type : {"unigram", "bpe"}) {
    auto tok = load(type);
    for (const auto& [text, where] : bad) {
      try {
        tok->encode(text);
        ADD_FAILURE() << type << ": no error for invalid UTF-8 (" << where << ")";
      } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("not valid UTF-8 " + where), std::string::npos) << what;
        EXPECT_NE(what.find("tokenizer/byte"), std::string::npos) << what;
      }
    }
    const std::string emoji = "\xf0\x9f\x99\x82 and \xf4\x8f\xbf\xbf";  // U+1F642, U+10FFFF
    EXPECT_EQ(tok->decode(tok->encode(emoji)), emoji) << type;
  }
}

TEST_F(SentencePiece, MissingModelFileIsAConfigErrorNamingThePath) {
  const std::string path = (*dir_ / "nope.model").string();
  try {
    create<Tokenizer>("tokenizer", "sentencepiece", {{"model", path}});
    FAIL() << "loaded a missing model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model"), std::string::npos) << e.what();
  }
}

TEST_F(SentencePiece, BrokenModelFileIsAConfigErrorNamingThePath) {
  const fs::path path = *dir_ / "broken.model";
  write_text(path, "this is not a protobuf");
  try {
    create<Tokenizer>("tokenizer", "sentencepiece", {{"model", path.string()}});
    FAIL() << "loaded a broken model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  // A model whose trie the library cannot build (a zero-length piece; found by the fuzz target
  // sentencepiece_model, tests/fuzz/crashes/): the library throws instead of returning a status.
  const fs::path crash = fs::path(NNKIT_SOURCE_DIR_FOR_FUZZ_CRASHES) / "sentencepiece_model" /
                         "zero-length-piece.model";
  try {
    create<Tokenizer>("tokenizer", "sentencepiece", {{"model", crash.string()}});
    FAIL() << "loaded a model with a zero-length piece";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("the file is corrupt"), std::string::npos) << e.what();
  }
}

TEST_F(SentencePiece, TrainerRefusesBadOptions) {
  TokenizerTrainOptions options;
  options.inputs = {*dir_ / "corpus.txt"};
  options.output_prefix = *dir_ / "bad";
  options.vocab_size = 100;  // smaller than 4 specials + 256 bytes
  EXPECT_THROW(trainer()->train(options), ConfigError);
  options.vocab_size = 400;
  options.model_type = "wordpiece";
  EXPECT_THROW(trainer()->train(options), ConfigError);
  options.model_type = "bpe";
  options.inputs = {*dir_ / "missing.txt"};
  EXPECT_THROW(trainer()->train(options), IoError);
}

TEST_F(SentencePiece, TokenizerModelTravelsWithHfFolders) {
  TempDir tmp;
  std::string yaml = small_dense_yaml() + "tokenizer: {type: sentencepiece, model: \"" +
                     (*dir_ / "unigram.model").string() + "\"}\n";
  yaml.replace(yaml.find("vocab_size: 300"), 15, "vocab_size: 400");
  make_random_run(tmp / "run", yaml, 9);
  const HfExportReport exported = export_hf(tmp / "run", tmp / "hf", registry());
  EXPECT_TRUE(exported.tokenizer_copied);
  EXPECT_EQ(read_text(tmp / "hf" / "tokenizer.model"), read_text(*dir_ / "unigram.model"));
  const HfImportReport imported = import_hf(tmp / "hf", tmp / "back", registry());
  EXPECT_TRUE(imported.tokenizer_copied);
  LoadedRun back = load_run(tmp / "back");
  EXPECT_EQ(back.config.tokenizer.name, "sentencepiece");
  const fs::path model = back.config.tokenizer.options.get_string("model");
  EXPECT_EQ(model, fs::absolute(tmp / "back" / "tokenizer.model").lexically_normal());
  EXPECT_EQ(read_text(model), read_text(*dir_ / "unigram.model"));
}

}  // namespace
}  // namespace nnkit::test
