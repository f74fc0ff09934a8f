// Purpose: `tokenizer_trainer/sentencepiece`: trains a SentencePiece unigram or BPE model with
// libsentencepiece_train and writes <prefix>.model and <prefix>.vocab for tokenizer/sentencepiece.
// Always: pad 0 (<pad>), unk 1 (<unk>), bos 2 (<s>), eos 3 (</s>), the ids every nnkit model
// shares. For an exact round trip of any text (decode(encode(s)) == s): byte fallback on by
// default (characters without a piece become <0xNN> byte pieces instead of <unk>), the identity
// normaliser (no NFKC folding) and no whitespace collapsing.
// Input files are read line by line through a SentenceIterator rather than the library's comma-
// separated `input` flag, so any file name (commas included) works.
// Ownership: no state between calls. Thread-safety: libsentencepiece_train keeps global flags;
// train from one thread at a time.
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/plugin.h"
#include "nnkit/tokenizer_trainer.h"

namespace nnkit::tokenizer {
namespace {

namespace fs = std::filesystem;

// Every line of every input file, in order; a file that cannot be opened ends the iteration
// with an error status naming it.
class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<fs::path>& files) : files_(files) { advance(); }

  bool done() const override { return finished_; }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  void advance() {
    while (!finished_) {
      if (in_.is_open() && std::getline(in_, line_)) return;
      in_.close();
      if (next_file_ == files_.size()) {
        finished_ = true;
        return;
      }
      const fs::path& file = files_[next_file_++];
      in_.open(file, std::ios::binary);
      if (!in_) {
        status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                              "cannot read " + file.string());
        finished_ = true;
      }
    }
  }

  const std::vector<fs::path>& files_;
  size_t next_file_ = 0;
  std::ifstream in_;
  std::string line_;
  bool finished_ = false;
  sentencepiece::util::Status status_;
};

class SentencePieceTrainer final : public TokenizerTrainer {
 public:
  std::vector<fs::path> train(const TokenizerTrainOptions& options) const override {
    if (options.inputs.empty()) throw ConfigError(id(), "no input files to train on");
    std::error_code ec;
    for (const fs::path& file : options.inputs) {
      if (fs::is_directory(file, ec)) {
        throw IoError(id(), "input file " + file.string() +
                                " is a directory; pass the text files themselves");
      }
      if (!fs::is_regular_file(file, ec)) {
        throw IoError(id(), "input file " + file.string() + " does not exist");
      }
    }
    if (options.model_type != "unigram" && options.model_type != "bpe" &&
        options.model_type != "word" && options.model_type != "char") {
      throw ConfigError(
          id(), "model_type '" + options.model_type + "' is not one of unigram, bpe, word, char");
    }
    // 4 specials (+ 256 byte pieces with byte fallback) come before any learned piece.
    const int64_t reserved = 4 + (options.byte_fallback ? 256 : 0);
    if (options.vocab_size <= reserved) {
      throw ConfigError(id(), "vocab_size " + std::to_string(options.vocab_size) +
                                  " leaves no room for learned pieces (the 4 special ids" +
                                  (options.byte_fallback ? " and 256 byte pieces" : "") + " take " +
                                  std::to_string(reserved) + ")");
    }
    if (!(options.character_coverage > 0.0 && options.character_coverage <= 1.0)) {
      throw ConfigError(id(), "character_coverage must be in (0, 1]");
    }
    if (options.output_prefix.empty()) throw ConfigError(id(), "no output prefix given");
    const fs::path parent = options.output_prefix.parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);

    std::unordered_map<std::string, std::string> kwargs = {
        {"model_prefix", options.output_prefix.string()},
        {"vocab_size", std::to_string(options.vocab_size)},
        {"model_type", options.model_type},
        {"character_coverage", std::to_string(options.character_coverage)},
        {"byte_fallback", options.byte_fallback ? "true" : "false"},
        {"pad_id", "0"},
        {"unk_id", "1"},
        {"bos_id", "2"},
        {"eos_id", "3"},
        {"pad_piece", "<pad>"},
        {"unk_piece", "<unk>"},
        {"bos_piece", "<s>"},
        {"eos_piece", "</s>"},
        // Exact round trip: keep the text as written.
        {"normalization_rule_name", "identity"},
        {"remove_extra_whitespaces", "false"},
        {"allow_whitespace_only_pieces", "true"},
        {"split_digits", "true"},
        {"shuffle_input_sentence", "true"},
    };
    if (options.input_sentence_size > 0) {
      kwargs["input_sentence_size"] = std::to_string(options.input_sentence_size);
    }
    if (options.threads > 0) kwargs["num_threads"] = std::to_string(options.threads);
    LineIterator lines(options.inputs);
    const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &lines);
    if (!status.ok()) throw Error(id(), "SentencePiece training failed: " + status.ToString());
    fs::path model = options.output_prefix;
    model += ".model";
    fs::path vocab = options.output_prefix;
    vocab += ".vocab";
    return {model, vocab};
  }
};

std::vector<OptionSpec> trainer_options() {
  return {};
}

Component* create_trainer(const CreateArgs&) {
  return new SentencePieceTrainer();
}

}  // namespace
}  // namespace nnkit::tokenizer

NNKIT_PLUGIN(tokenizer_trainer, sentencepiece, "0.1.0",
             "trains SentencePiece unigram/BPE models (pad 0, unk 1, bos 2, eos 3)",
             &nnkit::tokenizer::trainer_options, &nnkit::tokenizer::create_trainer)
