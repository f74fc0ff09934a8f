#include "nnkit/io/data_loader.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "io_test_util.h"

namespace nnkit {
namespace {

using test::expect_io_error;
using test::TempDir;

// Tokens 0, 1, 2, ... (mod vocab) so a window's position is readable from its contents.
TokenFile make_tokens(const TempDir& dir, int64_t n, int64_t vocab = 1 << 20) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i % vocab);
  write_token_file(dir / "tokens.bin", ids, vocab);
  return TokenFile(dir / "tokens.bin");
}

TEST(WindowLoader, SplitSizes) {
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 1000);
  WindowLoader a(tokens, 8, 0.05, 1);
  EXPECT_EQ(a.train_tokens(), 950);
  EXPECT_EQ(a.validation_tokens(), 50);
  EXPECT_EQ(a.validation_windows(), (50 - 1) / 8);
  WindowLoader b(tokens, 8, 0.0, 1);
  EXPECT_EQ(b.train_tokens(), 1000);
  EXPECT_EQ(b.validation_tokens(), 0);
  EXPECT_EQ(b.validation_batch_count(4), 0);
  EXPECT_TRUE(b.validation_batches(4).empty());
}

TEST(WindowLoader, TrainingWindowsAreShiftedAndStayInTheTrainingPart) {
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 1000);
  WindowLoader loader(tokens, 16, 0.1, 7);
  std::vector<int32_t> in, tg;
  std::set<int32_t> starts;
  for (int step = 0; step < 200; ++step) {
    loader.next_train_batch(4, in, tg);
    ASSERT_EQ(in.size(), 64u);
    ASSERT_EQ(tg.size(), 64u);
    for (int b = 0; b < 4; ++b) {
      const int32_t start = in[static_cast<size_t>(b * 16)];
      starts.insert(start);
      for (int t = 0; t < 16; ++t) {
        EXPECT_EQ(in[static_cast<size_t>(b * 16 + t)], start + t);
        EXPECT_EQ(tg[static_cast<size_t>(b * 16 + t)], start + t + 1);
      }
      EXPECT_LE(start + 16, 899);  // the last target is token 899 at most (train part: 900)
    }
  }
  EXPECT_GT(starts.size(), 300u);  // windows are spread out
  EXPECT_EQ(*starts.begin() >= 0, true);
  EXPECT_EQ(loader.save_state().windows_drawn, 800u);
}

TEST(WindowLoader, SameSeedSameWindowsDifferentSeedDifferent) {
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 5000);
  WindowLoader a(tokens, 32, 0.05, 1234), b(tokens, 32, 0.05, 1234), c(tokens, 32, 0.05, 99);
  std::vector<int32_t> ia, ta, ib, tb, ic, tc;
  bool any_difference = false;
  for (int i = 0; i < 10; ++i) {
    a.next_train_batch(8, ia, ta);
    b.next_train_batch(8, ib, tb);
    c.next_train_batch(8, ic, tc);
    EXPECT_EQ(ia, ib);
    EXPECT_EQ(ta, tb);
    any_difference |= ia != ic;
  }
  EXPECT_TRUE(any_difference);
}

TEST(WindowLoader, FirstWindowsArePinned) {
  // Guards the documented promise that a seed names the same windows on every platform:
  // the draw uses only mt19937_64 (standardised) and our own rejection sampling.
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 10000);
  WindowLoader loader(tokens, 4, 0.0, 42);
  std::vector<int32_t> in, tg;
  loader.next_train_batch(3, in, tg);
  std::mt19937_64 rng(42);
  for (int b = 0; b < 3; ++b) {
    const uint64_t n = 10000 - 4;
    uint64_t r;
    do {
      r = rng();
    } while (r >= UINT64_MAX - UINT64_MAX % n);
    EXPECT_EQ(in[static_cast<size_t>(b * 4)], static_cast<int32_t>(r % n));
  }
}

TEST(WindowLoader, SaveRestoreContinuesIdentically) {
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 5000);
  WindowLoader a(tokens, 32, 0.05, 5);
  std::vector<int32_t> in, tg;
  for (int i = 0; i < 3; ++i) a.next_train_batch(4, in, tg);
  const WindowLoader::State state = a.save_state();
  EXPECT_EQ(state.windows_drawn, 12u);
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 5; ++i) {
    a.next_train_batch(4, in, tg);
    expected.push_back(in);
  }
  // A fresh loader (as after a restart) with a different seed, restored from the state.
  WindowLoader b(tokens, 32, 0.05, 999);
  b.restore_state(state);
  EXPECT_EQ(b.save_state().windows_drawn, 12u);
  for (int i = 0; i < 5; ++i) {
    b.next_train_batch(4, in, tg);
    EXPECT_EQ(in, expected[static_cast<size_t>(i)]) << "batch " << i;
  }
  expect_io_error([&] { b.restore_state({"not a generator", 0}); }, {"corrupt"});
}

TEST(WindowLoader, ValidationCoversTheTailInOrderWithoutOverlap) {
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 1000);
  WindowLoader loader(tokens, 10, 0.2, 3);  // train 800, validation 200 -> 19 windows
  ASSERT_EQ(loader.train_tokens(), 800);
  EXPECT_EQ(loader.validation_windows(), 19);
  EXPECT_EQ(loader.validation_batch_count(4), 5);
  const std::vector<WindowBatch> batches = loader.validation_batches(4);
  ASSERT_EQ(batches.size(), 5u);
  EXPECT_EQ(batches.back().rows, 3);
  std::vector<int32_t> all_targets;
  for (const WindowBatch& b : batches) {
    ASSERT_EQ(b.inputs.size(), static_cast<size_t>(b.rows * 10));
    for (size_t i = 0; i < b.inputs.size(); ++i) {
      EXPECT_EQ(b.targets[i], b.inputs[i] + 1);
      EXPECT_GE(b.inputs[i], 800);
    }
    all_targets.insert(all_targets.end(), b.targets.begin(), b.targets.end());
  }
  // Every target from 801 on is scored exactly once, in order.
  std::vector<int32_t> expected(190);
  std::iota(expected.begin(), expected.end(), 801);
  EXPECT_EQ(all_targets, expected);
  // Deterministic and independent of training draws.
  std::vector<int32_t> in, tg;
  loader.next_train_batch(2, in, tg);
  EXPECT_EQ(loader.validation_batches(4)[1].inputs, batches[1].inputs);
  expect_io_error([&] { loader.validation_batch(5, 4, in, tg); }, {"outside [0, 5)"});
}

TEST(WindowLoader, Errors) {
  TempDir dir;
  write_token_file(dir / "empty.bin", {}, 10);
  TokenFile empty(dir / "empty.bin");
  expect_io_error([&] { WindowLoader l(empty, 4); }, {"empty.bin", "contains no tokens"});

  TokenFile tokens = make_tokens(dir, 100);
  expect_io_error(
      [&] { WindowLoader l(tokens, 100, 0.0); },
      {"tokens.bin", "training part has 100 tokens", "one window needs seq_len + 1 = 101 tokens",
       "larger corpus", "smaller train.seq_len", "smaller validation fraction"});
  expect_io_error([&] { WindowLoader l(tokens, 8, 0.05); },
                  {"validation part has 5 tokens", "seq_len + 1 = 9"});
  expect_io_error([&] { WindowLoader l(tokens, 0); }, {"sequence length must be at least 1"});
  expect_io_error([&] { WindowLoader l(tokens, 4, 1.0); }, {"validation fraction"});
  expect_io_error([&] { WindowLoader l(tokens, 4, -0.1); }, {"validation fraction"});
  WindowLoader ok(tokens, 4, 0.1);
  std::vector<int32_t> in, tg;
  expect_io_error([&] { ok.next_train_batch(0, in, tg); }, {"batch size"});
}

// The trainer.json form of the loader state: round trip, and anything malformed is an IoError
// (std::stoull used to let std::invalid_argument escape for "abc\n...", found by the
// trainer_state fuzz target's seeds).
TEST(WindowLoader, StateEncodesAndRefusesMalformedText) {
  TempDir dir;
  TokenFile tokens = make_tokens(dir, 100);
  WindowLoader a(tokens, 4, 0.1, 7);
  std::vector<int32_t> in, tg;
  a.next_train_batch(3, in, tg);
  const WindowLoader::State state = WindowLoader::State::decode(a.save_state().encode());
  EXPECT_EQ(state.windows_drawn, 3u);
  WindowLoader b(tokens, 4, 0.1, 99);
  b.restore_state(state);
  std::vector<int32_t> in_a, tg_a, in_b, tg_b;
  a.next_train_batch(2, in_a, tg_a);
  b.next_train_batch(2, in_b, tg_b);
  EXPECT_EQ(in_a, in_b);
  for (const std::string bad :
       {"abc\n1 2 3", "no newline", "-3\nx", "\nx", " 3\nx", "99999999999999999999999\nx"}) {
    expect_io_error([&] { WindowLoader::State::decode(bad); },
                    {"malformed data-loader state", "checkpoint is corrupt"});
  }
}

}  // namespace
}  // namespace nnkit
