// Purpose: the `tokenizer_trainer/*` interface: builds a tokenizer's vocabulary files from text.
// It is a plugin kind of its own (not a method of Tokenizer) because training needs no vocabulary
// to start from, while a Tokenizer is created from one; and because the library that can train
// (libsentencepiece_train) is optional, so the CLI reaches it only through the registry and never
// links it. A tokenizer_trainer/X writes the files that tokenizer/X loads, with nnkit's special
// ids: pad 0, unk 1, bos 2, eos 3.
// Ownership: a trainer holds no state between calls; train() reads the input files and writes
// the output files, keeping no handle to either. Thread-safety: train() is const, but the
// underlying libraries may use global state, so call it from one thread at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "nnkit/component.h"

namespace nnkit {

struct TokenizerTrainOptions {
  std::vector<std::filesystem::path> inputs;  // text files; each line is one training sentence
  std::filesystem::path output_prefix;        // writes <prefix>.model, <prefix>.vocab, ...
  int64_t vocab_size = 32000;
  std::string model_type = "unigram";  // the trainer's algorithms, e.g. "unigram", "bpe"
  double character_coverage = 1.0;     // share of characters covered by pieces (rest: bytes)
  bool byte_fallback = true;           // unknown characters become byte pieces: exact round trip
  int64_t input_sentence_size = 0;     // sample at most this many sentences (0 = all)
  int64_t threads = 0;                 // 0 = the library's default
};

class NNKIT_API TokenizerTrainer : public Component {
 public:
  ~TokenizerTrainer() override;
  // Trains and writes the output files; returns their paths (the loadable model first). Throws
  // ConfigError for bad options (naming the option) and IoError for unreadable inputs or
  // unwritable outputs.
  virtual std::vector<std::filesystem::path> train(const TokenizerTrainOptions& options) const = 0;
};

}  // namespace nnkit
