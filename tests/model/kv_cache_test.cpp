// Purpose: incremental decoding with the KV cache equals the full forward. A prompt is prefilled
// with forward_cached(all_positions=true) and then fed one token at a time; every position's
// logits must match Transformer::logits() of the whole sequence (MoE and dense, NTK alpha 1 and
// 8). A left-padded batch of two prompts of different lengths (kv_start) must give each prompt
// the logits it gets alone. The device-length decode step (decode_step) must do the same.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "model/model_test_util.h"

namespace nnkit::test {
namespace {

constexpr double kParityTolerance = 1e-4;  // max |cached - full| logit

struct CacheCase {
  std::string name;
  ModelSpec spec;
};

// gtest prints the case by name in failure messages.
void PrintTo(const CacheCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<CacheCase> cache_cases() {
  std::vector<CacheCase> cases;
  for (bool moe : {true, false}) {
    for (double alpha : {1.0, 8.0}) {
      ModelSpec spec;
      spec.moe = moe;
      spec.ntk_alpha = alpha;
      spec.rope_base = 100.0;  // low base: the 12 positions rotate every frequency pair visibly
      cases.push_back({std::string(moe ? "Moe" : "Dense") + "NtkAlpha" +
                           std::to_string(static_cast<int>(alpha)),
                       spec});
    }
  }
  return cases;
}

// Rows [first, last) of a (rows, vocab) host matrix.
std::vector<float> rows_of(const std::vector<float>& m, int64_t vocab, int64_t first,
                           int64_t last) {
  return std::vector<float>(m.begin() + first * vocab, m.begin() + last * vocab);
}

class KvCacheParityTest : public ::testing::TestWithParam<CacheCase> {};

TEST_P(KvCacheParityTest, PrefillThenOneTokenAtATimeEqualsTheFullForward) {
  const ModelSpec& spec = GetParam().spec;
  const int64_t vocab = spec.vocab_size;
  auto model = build_model(spec, 13);
  const int64_t total = 12;
  const int64_t prompt = 5;
  const std::vector<int32_t> ids = random_ids(size_t(total), vocab, 17);
  const std::vector<float> full = host_values(*model, model->logits(ids, 1, total));

  model->init_cache(1, total);
  const std::vector<int32_t> prompt_ids(ids.begin(), ids.begin() + prompt);
  const std::vector<float> prefill =
      host_values(*model, model->forward_cached(prompt_ids, 1, prompt, 0, {}, true));
  EXPECT_LE(max_abs_diff(prefill, rows_of(full, vocab, 0, prompt)), kParityTolerance);

  // The default (last position only) agrees with all_positions' last row.
  model->init_cache(1, total);
  const std::vector<float> last =
      host_values(*model, model->forward_cached(prompt_ids, 1, prompt, 0, {}, false));
  EXPECT_LE(max_abs_diff(last, rows_of(full, vocab, prompt - 1, prompt)), kParityTolerance);

  // Prefill in two chunks (the second appends 3 tokens after 2 in the cache), then decode.
  model->init_cache(1, total);
  const std::vector<float> chunk1 =
      host_values(*model, model->forward_cached({ids.begin(), ids.begin() + 2}, 1, 2, 0, {}, true));
  const std::vector<float> chunk2 = host_values(
      *model, model->forward_cached({ids.begin() + 2, ids.begin() + prompt}, 1, 3, 2, {}, true));
  EXPECT_LE(max_abs_diff(chunk1, rows_of(full, vocab, 0, 2)), kParityTolerance);
  EXPECT_LE(max_abs_diff(chunk2, rows_of(full, vocab, 2, prompt)), kParityTolerance);

  for (int64_t t = prompt; t < total; ++t) {
    SCOPED_TRACE("position " + std::to_string(t));
    const std::vector<float> step =
        host_values(*model, model->forward_cached({ids[size_t(t)]}, 1, 1, t, {}, false));
    EXPECT_LE(max_abs_diff(step, rows_of(full, vocab, t, t + 1)), kParityTolerance);
  }
}

TEST_P(KvCacheParityTest, LeftPaddedBatchEqualsEachPromptAlone) {
  const ModelSpec& spec = GetParam().spec;
  const int64_t vocab = spec.vocab_size;
  auto model = build_model(spec, 19);
  // Two sequences of 4 and 9 prompt tokens, each continued by 3 decoded tokens.
  const std::vector<int64_t> prompt_len = {4, 9};
  const int64_t longest = 9;
  const int64_t steps = 3;
  std::vector<std::vector<int32_t>> seqs;
  for (size_t b = 0; b < 2; ++b) {
    seqs.push_back(random_ids(size_t(prompt_len[b] + steps), vocab, 40 + b, /*low=*/1));
  }
  std::vector<std::vector<float>> alone;
  for (const auto& s : seqs) {
    alone.push_back(host_values(*model, model->logits(s, 1, int64_t(s.size()))));
  }

  // Left padding with id 0 (pad); kv_start marks each sequence's first real token.
  std::vector<int32_t> padded(size_t(2 * longest), 0);
  std::vector<int32_t> kv_start(2);
  for (size_t b = 0; b < 2; ++b) {
    kv_start[b] = static_cast<int32_t>(longest - prompt_len[b]);
    std::copy_n(seqs[b].begin(), prompt_len[b],
                padded.begin() + int64_t(b) * longest + kv_start[b]);
  }
  model->init_cache(2, longest + steps);
  const std::vector<float> prefill =
      host_values(*model, model->forward_cached(padded, 2, longest, 0, kv_start, true));
  for (size_t b = 0; b < 2; ++b) {
    SCOPED_TRACE("sequence " + std::to_string(b));
    const int64_t row0 = int64_t(b) * longest + kv_start[b];
    EXPECT_LE(max_abs_diff(rows_of(prefill, vocab, row0, row0 + prompt_len[b]),
                           rows_of(alone[b], vocab, 0, prompt_len[b])),
              kParityTolerance);
  }
  for (int64_t step = 0; step < steps; ++step) {
    SCOPED_TRACE("decode step " + std::to_string(step));
    const std::vector<int32_t> next = {seqs[0][size_t(prompt_len[0] + step)],
                                       seqs[1][size_t(prompt_len[1] + step)]};
    const std::vector<float> logits =
        host_values(*model, model->forward_cached(next, 2, 1, longest + step, kv_start, false));
    for (size_t b = 0; b < 2; ++b) {
      const int64_t position = prompt_len[b] + step;
      EXPECT_LE(max_abs_diff(rows_of(logits, vocab, int64_t(b), int64_t(b) + 1),
                             rows_of(alone[b], vocab, position, position + 1)),
                kParityTolerance)
          << "sequence " << b;
    }
  }
}

TEST_P(KvCacheParityTest, DeviceLengthDecodeStepsEqualTheFullForward) {
  // decode_step() reads the cache length from device memory (what a recorded CUDA Graph
  // replays); on every backend it must give each position the full forward's logits, for a
  // left-padded batch as for one sequence.
  const ModelSpec& spec = GetParam().spec;
  const int64_t vocab = spec.vocab_size;
  auto model = build_model(spec, 23);
  const std::vector<int64_t> prompt_len = {3, 6};
  const int64_t longest = 6, steps = 5;
  std::vector<std::vector<int32_t>> seqs;
  std::vector<std::vector<float>> alone;
  for (size_t b = 0; b < 2; ++b) {
    seqs.push_back(random_ids(size_t(prompt_len[b] + steps), vocab, 60 + b, /*low=*/1));
    alone.push_back(host_values(*model, model->logits(seqs[b], 1, int64_t(seqs[b].size()))));
  }
  std::vector<int32_t> padded(size_t(2 * longest), 0);
  std::vector<int32_t> kv_start(2);
  for (size_t b = 0; b < 2; ++b) {
    kv_start[b] = static_cast<int32_t>(longest - prompt_len[b]);
    std::copy_n(seqs[b].begin(), prompt_len[b],
                padded.begin() + int64_t(b) * longest + kv_start[b]);
  }
  model->init_cache(2, longest + steps);
  model->forward_cached(padded, 2, longest, 0, kv_start, false);
  model->begin_decode(2, kv_start);
  for (int64_t step = 0; step < steps; ++step) {
    SCOPED_TRACE("decode step " + std::to_string(step));
    const std::vector<int32_t> next = {seqs[0][size_t(prompt_len[0] + step)],
                                       seqs[1][size_t(prompt_len[1] + step)]};
    const std::vector<float> logits = host_values(*model, model->decode_step(next, longest + step));
    for (size_t b = 0; b < 2; ++b) {
      const int64_t position = prompt_len[b] + step;
      EXPECT_LE(max_abs_diff(rows_of(logits, vocab, int64_t(b), int64_t(b) + 1),
                             rows_of(alone[b], vocab, position, position + 1)),
                kParityTolerance)
          << "sequence " << b;
    }
  }
  EXPECT_FALSE(model->decode_recorded()) << "the CPU backend records nothing";
  // A step past the cache is refused, naming the capacity.
  try {
    model->decode_step({1, 1}, longest + steps);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot take 1 more"), std::string::npos) << e.what();
  }
  model->end_decode();
  EXPECT_THROW(model->decode_step({1, 1}, longest), Error);
}

INSTANTIATE_TEST_SUITE_P(Models, KvCacheParityTest, ::testing::ValuesIn(cache_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace nnkit::test
