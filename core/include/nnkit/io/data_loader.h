// Purpose: turns a TokenFile into training and validation batches of next-token windows.
// The token stream is split once: the first (1 - val_fraction) of the tokens train, the tail
// validates, so no validation token is ever trained on. A window is seq_len + 1 consecutive tokens:
// inputs are the first seq_len, targets the same shifted by one.
// Training windows start at uniformly random positions drawn from the loader's own
// std::mt19937_64 (seeded by `seed`; the draw does not use std::uniform_int_distribution, whose
// output differs between standard libraries), so a seed names the same windows everywhere, and
// save_state()/restore_state() let a resumed run continue the exact sequence.
// Validation windows are fixed: consecutive, starting seq_len apart, so every validation target is
// scored exactly once, in order.
// Thread-safety: next_train_batch and restore_state mutate the RNG: one thread at a time. The
// validation methods are const. Ownership: the loader keeps a reference to the TokenFile, which
// must outlive it. Output vectors are resized by the loader.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nnkit/export.h"
#include "nnkit/io/token_file.h"

namespace nnkit {

// One batch: rows windows, each of seq_len inputs and seq_len targets, row-major (rows, seq_len).
struct WindowBatch {
  int64_t rows = 0;
  std::vector<int32_t> inputs;
  std::vector<int32_t> targets;
};

class NNKIT_API WindowLoader {
 public:
  // Resumable position of the training sampler. `rng` is the std::mt19937_64 text form
  // (operator<<); `windows_drawn` counts training windows drawn so far (for logs and checks).
  struct State {
    std::string rng;
    uint64_t windows_drawn = 0;
    // One string for trainer.json: "<windows drawn>\n<rng text>".
    NNKIT_API std::string encode() const;
    // The inverse of encode(); throws IoError naming what is malformed (the RNG text itself is
    // checked by restore_state).
    NNKIT_API static State decode(const std::string& text);
  };

  // Throws IoError when the file has no tokens or either part is smaller than one window
  // (seq_len + 1 tokens; the validation part only when val_fraction > 0), and on bad arguments
  // (seq_len < 1, val_fraction outside [0, 1)).
  WindowLoader(const TokenFile& tokens, int64_t seq_len, double val_fraction = 0.05,
               uint64_t seed = 0);

  int64_t seq_len() const { return seq_len_; }
  // Tokens in the training part [0, train_tokens()) and the validation part (the rest).
  int64_t train_tokens() const { return train_tokens_; }
  int64_t validation_tokens() const { return tokens_->size() - train_tokens_; }

  // Fills inputs and targets with `batch` random training windows, each (batch, seq_len).
  void next_train_batch(int64_t batch, std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

  // Validation windows in a pass: (validation_tokens() - 1) / seq_len (0 when there is none).
  int64_t validation_windows() const;
  // Number of batches of `batch` windows in a validation pass (the last may be partial).
  int64_t validation_batch_count(int64_t batch) const;
  // Batch `index` of the validation pass into inputs/targets; returns its number of rows.
  int64_t validation_batch(int64_t index, int64_t batch, std::vector<int32_t>& inputs,
                           std::vector<int32_t>& targets) const;
  // The whole validation pass, in order (convenient when the validation part is small).
  std::vector<WindowBatch> validation_batches(int64_t batch) const;

  State save_state() const;
  // Continues from `state`; throws IoError if the RNG text does not parse.
  void restore_state(const State& state);

 private:
  void fill_window(int64_t start, int32_t* inputs, int32_t* targets) const;
  // Uniform in [0, n) by rejection, independent of the standard library.
  uint64_t uniform(uint64_t n);

  const TokenFile* tokens_;
  int64_t seq_len_;
  int64_t train_tokens_;
  std::mt19937_64 rng_;
  uint64_t windows_drawn_ = 0;
};

}  // namespace nnkit
