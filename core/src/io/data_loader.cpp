// Purpose: see nnkit/io/data_loader.h.
#include "nnkit/io/data_loader.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "io/quote.h"
#include "nnkit/error.h"

namespace nnkit {

namespace {
constexpr const char* kTooSmallHint =
    "; use a larger corpus, a smaller train.seq_len, or a smaller validation fraction";
}  // namespace

WindowLoader::WindowLoader(const TokenFile& tokens, int64_t seq_len, double val_fraction,
                           uint64_t seed)
    : tokens_(&tokens), seq_len_(seq_len), train_tokens_(0), rng_(seed) {
  const std::string file = "token file " + io_detail::quoted(tokens.path());
  if (seq_len < 1) {
    throw IoError("io", "sequence length must be at least 1, got " + std::to_string(seq_len));
  }
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw IoError("io",
                  "validation fraction must be in [0, 1), got " + std::to_string(val_fraction));
  }
  const int64_t n = tokens.size();
  if (n == 0) {
    throw IoError("io", file + " contains no tokens; prepare it from a non-empty corpus");
  }
  const int64_t window = seq_len + 1;
  train_tokens_ = static_cast<int64_t>(std::floor(static_cast<double>(n) * (1.0 - val_fraction)));
  if (train_tokens_ < window) {
    throw IoError("io", file + ": the training part has " + std::to_string(train_tokens_) +
                            " tokens (of " + std::to_string(n) + ", validation fraction " +
                            std::to_string(val_fraction) + ") but one window needs seq_len + 1 = " +
                            std::to_string(window) + " tokens" + kTooSmallHint);
  }
  const int64_t val = n - train_tokens_;
  if (val_fraction > 0.0 && val < window) {
    throw IoError("io", file + ": the validation part has " + std::to_string(val) + " tokens (of " +
                            std::to_string(n) + ", validation fraction " +
                            std::to_string(val_fraction) + ") but one window needs seq_len + 1 = " +
                            std::to_string(window) + " tokens" + kTooSmallHint);
  }
}

uint64_t WindowLoader::uniform(uint64_t n) {
  // Reject the top partial block of 2^64 so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do {
    r = rng_();
  } while (r >= limit);
  return r % n;
}

void WindowLoader::fill_window(int64_t start, int32_t* inputs, int32_t* targets) const {
  tokens_->read(start, seq_len_, inputs);
  tokens_->read(start + 1, seq_len_, targets);
}

void WindowLoader::next_train_batch(int64_t batch, std::vector<int32_t>& inputs,
                                    std::vector<int32_t>& targets) {
  if (batch < 1) throw IoError("io", "batch size must be at least 1, got " + std::to_string(batch));
  const auto total = static_cast<size_t>(batch * seq_len_);
  inputs.resize(total);
  targets.resize(total);
  // Starts in [0, train_tokens - seq_len - 1]: the window's last target stays in the training part.
  const auto starts = static_cast<uint64_t>(train_tokens_ - seq_len_);
  for (int64_t b = 0; b < batch; ++b) {
    const auto start = static_cast<int64_t>(uniform(starts));
    fill_window(start, inputs.data() + b * seq_len_, targets.data() + b * seq_len_);
    ++windows_drawn_;
  }
}

int64_t WindowLoader::validation_windows() const {
  const int64_t val = validation_tokens();
  return val < seq_len_ + 1 ? 0 : (val - 1) / seq_len_;
}

int64_t WindowLoader::validation_batch_count(int64_t batch) const {
  if (batch < 1) throw IoError("io", "batch size must be at least 1, got " + std::to_string(batch));
  return (validation_windows() + batch - 1) / batch;
}

int64_t WindowLoader::validation_batch(int64_t index, int64_t batch, std::vector<int32_t>& inputs,
                                       std::vector<int32_t>& targets) const {
  const int64_t batches = validation_batch_count(batch);
  if (index < 0 || index >= batches) {
    throw IoError("io", "validation batch " + std::to_string(index) + " is outside [0, " +
                            std::to_string(batches) + ")");
  }
  const int64_t first = index * batch;
  const int64_t rows = std::min(batch, validation_windows() - first);
  inputs.resize(static_cast<size_t>(rows * seq_len_));
  targets.resize(static_cast<size_t>(rows * seq_len_));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = train_tokens_ + (first + r) * seq_len_;
    fill_window(start, inputs.data() + r * seq_len_, targets.data() + r * seq_len_);
  }
  return rows;
}

std::vector<WindowBatch> WindowLoader::validation_batches(int64_t batch) const {
  std::vector<WindowBatch> out(static_cast<size_t>(validation_batch_count(batch)));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].rows = validation_batch(static_cast<int64_t>(i), batch, out[i].inputs, out[i].targets);
  }
  return out;
}

WindowLoader::State WindowLoader::save_state() const {
  std::ostringstream text;
  text << rng_;
  return State{text.str(), windows_drawn_};
}

std::string WindowLoader::State::encode() const {
  return std::to_string(windows_drawn) + "\n" + rng;
}

WindowLoader::State WindowLoader::State::decode(const std::string& text) {
  const size_t newline = text.find('\n');
  const std::string count = text.substr(0, newline == std::string::npos ? 0 : newline);
  // Digits only: std::stoull would also take a sign, spaces or a prefix, and throws its own
  // exception types on anything else.
  const bool digits = !count.empty() && count.size() <= 20 &&
                      count.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  const unsigned long long drawn = digits ? std::strtoull(count.c_str(), nullptr, 10) : 0;
  if (newline == std::string::npos || !digits || errno == ERANGE) {
    throw IoError("io",
                  "trainer.json has a malformed data-loader state (expected \"<windows drawn>\\n"
                  "<random-generator state>\"); the checkpoint is corrupt");
  }
  State state;
  state.windows_drawn = drawn;
  state.rng = text.substr(newline + 1);
  return state;
}

void WindowLoader::restore_state(const State& state) {
  std::istringstream text(state.rng);
  std::mt19937_64 rng;
  text >> rng;
  if (text.fail()) {
    throw IoError("io",
                  "data loader state does not hold a valid random-generator state; the "
                  "checkpoint is corrupt");
  }
  rng_ = rng;
  windows_drawn_ = state.windows_drawn;
}

}  // namespace nnkit
