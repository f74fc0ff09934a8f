// Purpose: tests of `attention/mqa`: forward against a double reference (causal mask, MHA/GQA/MQA
// head sharing, rotate-half RoPE with the NTK-scaled base), backward (dx and the four projection
// gradients) against central differences of sum(forward(x) * r), KV-cache decoding equal to the
// full forward, gradient accumulation, and option validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "layer_test_util.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

constexpr int64_t kChannels = 16;
constexpr int64_t kHeads = 4;
constexpr int64_t kHeadDim = 8;
constexpr double kBase = 10000.0;
constexpr double kNtkAlpha = 4.0;

struct Geometry {
  int64_t batch;
  int64_t seq;
  int64_t kv_heads;
  int64_t position_offset;
};

double scaled_base() {
  return kBase * std::pow(kNtkAlpha, double(kHeadDim) / double(kHeadDim - 2));
}

// Rotate-half RoPE in place on rows of `heads` heads: dimension i pairs with i + D/2.
void rope_reference(HostMatrix& x, int64_t rows, int64_t heads, const std::vector<int32_t>& pos) {
  const int64_t half = kHeadDim / 2;
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = x.data() + (n * heads + h) * kHeadDim;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos[n] * std::pow(scaled_base(), -2.0 * double(i) / double(kHeadDim));
        const double a = v[i];
        const double b = v[i + half];
        v[i] = a * std::cos(angle) - b * std::sin(angle);
        v[i + half] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
  }
}

std::vector<int32_t> positions_of(const Geometry& g) {
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t t = 0; t < g.seq; ++t) pos.push_back(static_cast<int32_t>(g.position_offset + t));
  }
  return pos;
}

HostMatrix attention_reference(const Geometry& g, const HostMatrix& x,
                               std::map<std::string, HostMatrix>& p) {
  const int64_t rows = g.batch * g.seq;
  const int64_t q_width = kHeads * kHeadDim;
  const int64_t kv_width = g.kv_heads * kHeadDim;
  HostMatrix q = matmul_transposed(x, p["q_proj.weight"], rows, kChannels, q_width);
  HostMatrix k = matmul_transposed(x, p["k_proj.weight"], rows, kChannels, kv_width);
  const HostMatrix v = matmul_transposed(x, p["v_proj.weight"], rows, kChannels, kv_width);
  const std::vector<int32_t> pos = positions_of(g);
  rope_reference(q, rows, kHeads, pos);
  rope_reference(k, rows, g.kv_heads, pos);
  const double scale = 1.0 / std::sqrt(double(kHeadDim));
  const int64_t group = kHeads / g.kv_heads;
  HostMatrix attended(static_cast<size_t>(rows * q_width), 0.0);
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t h = 0; h < kHeads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t t = 0; t < g.seq; ++t) {
        const double* qv = q.data() + ((b * g.seq + t) * kHeads + h) * kHeadDim;
        std::vector<double> score(static_cast<size_t>(t + 1));
        for (int64_t j = 0; j <= t; ++j) {
          const double* kv = k.data() + ((b * g.seq + j) * g.kv_heads + kvh) * kHeadDim;
          double s = 0.0;
          for (int64_t d = 0; d < kHeadDim; ++d) s += qv[d] * kv[d];
          score[j] = s * scale;
        }
        const double top = *std::max_element(score.begin(), score.end());
        double total = 0.0;
        for (double& s : score) total += (s = std::exp(s - top));
        double* out = attended.data() + ((b * g.seq + t) * kHeads + h) * kHeadDim;
        for (int64_t j = 0; j <= t; ++j) {
          const double* vv = v.data() + ((b * g.seq + j) * g.kv_heads + kvh) * kHeadDim;
          for (int64_t d = 0; d < kHeadDim; ++d) out[d] += score[j] / total * vv[d];
        }
      }
    }
  }
  return matmul_transposed(attended, p["o_proj.weight"], rows, q_width, kChannels);
}

std::shared_ptr<Attention> make_attention(Backend* backend, int64_t kv_heads) {
  ModelDims dims;
  dims.hidden_dim = kChannels;
  dims.max_seq_len = 64;
  return create<Attention>("attention", "mqa",
                           {{"n_heads", std::to_string(kHeads)},
                            {"n_kv_heads", std::to_string(kv_heads)},
                            {"head_dim", std::to_string(kHeadDim)},
                            {"rope.base", "10000"},
                            {"rope.ntk_alpha", "4"}},
                           dims, backend);
}

class AttentionTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(AttentionTest, ForwardAndBackwardMatchReference) {
  auto backend = cpu_backend();
  const Geometry g{2, 5, GetParam(), 3};
  const int64_t rows = g.batch * g.seq;
  auto attention = make_attention(backend.get(), g.kv_heads);
  auto params = init_parameters(*backend, *attention, 21, 0.3f);
  const std::vector<float> x_host = random_values(rows * kChannels, 22);
  const std::vector<float> r_host = random_values(rows * kChannels, 23);

  ForwardContext ctx = make_context(*backend, g.batch, g.seq, true, g.position_offset);
  Tensor y = attention->forward(ctx, tensor_from(*backend, x_host, {rows, kChannels}));
  HostMatrix x = to_double(x_host);
  expect_close(to_vector(*backend, y), attention_reference(g, x, params), 1e-5, 1e-4, "y");

  // Objective sum(y * r); FD in double on the reference (eps 1e-5), analytic in fp32.
  // Tolerance: abs 1e-4 + rel 2e-3 of the largest expected gradient.
  Tensor dx = attention->backward(ctx, tensor_from(*backend, r_host, {rows, kChannels}));
  const HostMatrix r = to_double(r_host);
  auto objective = [&] { return dot(attention_reference(g, x, params), r); };
  expect_close(to_vector(*backend, dx), numeric_gradient(x, objective), 1e-4, 2e-3, "dx");
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
    expect_close(grad_of(*backend, *attention, name), numeric_gradient(params[name], objective),
                 1e-4, 2e-3, std::string("d") + name);
  }
}

// n_kv_heads 1 (MQA), 2 (GQA), 4 (MHA) with 4 query heads.
INSTANTIATE_TEST_SUITE_P(KvHeads, AttentionTest, ::testing::Values(1, 2, 4),
                         [](const auto& info) { return "kv" + std::to_string(info.param); });

TEST(Attention, ParametersUseHfNamesAndLayout) {
  auto backend = cpu_backend();
  auto attention = make_attention(backend.get(), 2);
  std::map<std::string, Shape> shapes;
  for (const Parameter& p : attention->parameters()) {
    shapes[p.name] = p.shape;
    EXPECT_FLOAT_EQ(p.init_std, 0.02f);
    EXPECT_TRUE(p.decay);
  }
  EXPECT_EQ(shapes["q_proj.weight"], Shape({kHeads * kHeadDim, kChannels}));
  EXPECT_EQ(shapes["k_proj.weight"], Shape({2 * kHeadDim, kChannels}));
  EXPECT_EQ(shapes["v_proj.weight"], Shape({2 * kHeadDim, kChannels}));
  EXPECT_EQ(shapes["o_proj.weight"], Shape({kChannels, kHeads * kHeadDim}));
  EXPECT_EQ(attention->cache_bytes_per_token(), 2 * 2 * kHeadDim * 4);
  EXPECT_NEAR(attention->rope_base(), scaled_base(), 1e-6 * scaled_base());
}

// Prefill 5 tokens, then 3 single-token steps, against one full forward over 8 tokens.
TEST(Attention, KvCacheDecodingMatchesFullForward) {
  auto backend = cpu_backend();
  constexpr int64_t kBatch = 2;
  constexpr int64_t kTotal = 8;
  constexpr int64_t kPrefill = 5;
  auto attention = make_attention(backend.get(), 1);
  init_parameters(*backend, *attention, 31, 0.3f);
  const std::vector<float> x_host = random_values(kBatch * kTotal * kChannels, 32);

  ForwardContext full_ctx = make_context(*backend, kBatch, kTotal, false);
  const std::vector<float> full = to_vector(
      *backend,
      attention->forward(full_ctx, tensor_from(*backend, x_host, {kBatch * kTotal, kChannels})));

  // Rows [begin, end) of every sequence, batch-major, as one (B * (end - begin), C) input.
  auto rows_of = [&](int64_t begin, int64_t end) {
    std::vector<float> out;
    for (int64_t b = 0; b < kBatch; ++b) {
      out.insert(out.end(), x_host.begin() + (b * kTotal + begin) * kChannels,
                 x_host.begin() + (b * kTotal + end) * kChannels);
    }
    return out;
  };
  attention->init_cache(*backend, kBatch, 10);
  double worst = 0.0;
  int64_t cache_len = 0;
  for (int64_t step_len : {kPrefill, int64_t{1}, int64_t{1}, int64_t{1}}) {
    ForwardContext ctx = make_context(*backend, kBatch, step_len, false, cache_len);
    ctx.use_kv_cache = true;
    ctx.cache_len = cache_len;
    const std::vector<float> step = to_vector(
        *backend,
        attention->forward(ctx, tensor_from(*backend, rows_of(cache_len, cache_len + step_len),
                                            {kBatch * step_len, kChannels})));
    for (int64_t b = 0; b < kBatch; ++b) {
      for (int64_t t = 0; t < step_len; ++t) {
        for (int64_t c = 0; c < kChannels; ++c) {
          const float got = step[(b * step_len + t) * kChannels + c];
          const float want = full[(b * kTotal + cache_len + t) * kChannels + c];
          worst = std::max(worst, double(std::abs(got - want)));
        }
      }
    }
    cache_len += step_len;
  }
  EXPECT_LE(worst, 1e-5);
}

// Left padding: sequence 1 starts with 2 pad rows (kv_start 2, positions counted from its first
// real token); its real rows must equal the same 4 tokens run alone, through prefill and a step.
TEST(Attention, LeftPaddedSequenceMatchesUnpadded) {
  auto backend = cpu_backend();
  constexpr int64_t kPad = 2;
  constexpr int64_t kPrompt = 6;  // padded length
  auto attention = make_attention(backend.get(), 2);
  init_parameters(*backend, *attention, 35, 0.3f);
  const std::vector<float> tokens = random_values((kPrompt - kPad + 1) * kChannels, 36);
  auto rows = [&](int64_t begin, int64_t end) {
    return std::vector<float>(tokens.begin() + begin * kChannels, tokens.begin() + end * kChannels);
  };

  // Alone: 4 prompt tokens, then 1 step.
  attention->init_cache(*backend, 1, 8);
  ForwardContext alone = make_context(*backend, 1, kPrompt - kPad, false);
  alone.use_kv_cache = true;
  std::vector<float> want =
      to_vector(*backend, attention->forward(alone, tensor_from(*backend, rows(0, kPrompt - kPad),
                                                                {kPrompt - kPad, kChannels})));
  ForwardContext alone_step = make_context(*backend, 1, 1, false, kPrompt - kPad);
  alone_step.use_kv_cache = true;
  alone_step.cache_len = kPrompt - kPad;
  const std::vector<float> want_step = to_vector(
      *backend,
      attention->forward(alone_step, tensor_from(*backend, rows(kPrompt - kPad, kPrompt - kPad + 1),
                                                 {1, kChannels})));

  // Batched behind a full-length neighbour: batch 0 is other data, batch 1 = 2 pads + the tokens.
  attention->init_cache(*backend, 2, 8);
  std::vector<float> batch = random_values(kPrompt * kChannels, 37);
  const std::vector<float> pads = random_values(kPad * kChannels, 38, 5.0f);
  batch.insert(batch.end(), pads.begin(), pads.end());
  const std::vector<float> real = rows(0, kPrompt - kPad);
  batch.insert(batch.end(), real.begin(), real.end());
  ForwardContext padded = make_context(*backend, 2, kPrompt, false);
  std::vector<int32_t> positions;
  for (int64_t t = 0; t < kPrompt; ++t) positions.push_back(static_cast<int32_t>(t));
  for (int64_t t = 0; t < kPrompt; ++t)
    positions.push_back(static_cast<int32_t>(std::max<int64_t>(0, t - kPad)));
  padded.positions = tensor_from_i32(*backend, positions, {2 * kPrompt});
  padded.kv_start = tensor_from_i32(*backend, {0, static_cast<int32_t>(kPad)}, {2});
  padded.use_kv_cache = true;
  const std::vector<float> got = to_vector(
      *backend, attention->forward(padded, tensor_from(*backend, batch, {2 * kPrompt, kChannels})));
  std::vector<float> step_input = random_values(kChannels, 39);
  const std::vector<float> real_step = rows(kPrompt - kPad, kPrompt - kPad + 1);
  step_input.insert(step_input.end(), real_step.begin(), real_step.end());
  ForwardContext step = make_context(*backend, 2, 1, false);
  step.positions = tensor_from_i32(*backend, {kPrompt, kPrompt - kPad}, {2});
  step.kv_start = padded.kv_start;
  step.use_kv_cache = true;
  step.cache_len = kPrompt;
  const std::vector<float> got_step = to_vector(
      *backend, attention->forward(step, tensor_from(*backend, step_input, {2, kChannels})));

  expect_close(std::vector<float>(got.begin() + (kPrompt + kPad) * kChannels, got.end()),
               to_double(want), 1e-5, 0.0, "padded prompt rows");
  expect_close(std::vector<float>(got_step.begin() + kChannels, got_step.end()),
               to_double(want_step), 1e-5, 0.0, "padded decode step");
}

TEST(Attention, SecondBackwardAccumulatesGradients) {
  auto backend = cpu_backend();
  auto attention = make_attention(backend.get(), 1);
  init_parameters(*backend, *attention, 41, 0.3f);
  ForwardContext ctx = make_context(*backend, 1, 4, true);
  attention->forward(ctx, tensor_from(*backend, random_values(4 * kChannels, 42), {4, kChannels}));
  const Tensor dy = tensor_from(*backend, random_values(4 * kChannels, 43), {4, kChannels});
  attention->backward(ctx, dy);
  std::vector<std::vector<float>> once;
  for (const Parameter& p : attention->parameters()) once.push_back(to_vector(*backend, p.grad));
  attention->backward(ctx, dy);
  for (size_t i = 0; i < once.size(); ++i) {
    const std::vector<float> twice = to_vector(*backend, attention->parameters()[i].grad);
    for (size_t j = 0; j < twice.size(); ++j) {
      ASSERT_NEAR(twice[j], 2.0f * once[i][j], 1e-5f + 1e-5f * std::abs(once[i][j]))
          << attention->parameters()[i].name;
    }
  }
}

TEST(AttentionOptions, HeadsNotDivisibleByKvHeadsIsAConfigError) {
  auto backend = cpu_backend();
  ModelDims dims;
  dims.hidden_dim = 16;
  try {
    create<Attention>("attention", "mqa",
                      {{"n_heads", "12"}, {"n_kv_heads", "5"}, {"head_dim", "8"}}, dims,
                      backend.get());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("attention/mqa"), std::string::npos) << message;
    EXPECT_NE(message.find("(12) is not divisible by n_kv_heads (5)"), std::string::npos)
        << message;
  }
}

TEST(AttentionOptions, BadHeadGeometryIsAConfigError) {
  auto backend = cpu_backend();
  ModelDims dims;
  dims.hidden_dim = 16;
  EXPECT_THROW(create<Attention>("attention", "mqa",
                                 {{"n_heads", "2"}, {"n_kv_heads", "4"}, {"head_dim", "8"}}, dims,
                                 backend.get()),
               ConfigError);
  EXPECT_THROW(create<Attention>("attention", "mqa", {{"n_heads", "2"}, {"head_dim", "7"}}, dims,
                                 backend.get()),
               ConfigError);
}

}  // namespace
}  // namespace nnkit::test
