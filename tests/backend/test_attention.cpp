// Purpose: backend/cpu attention forward/backward against a double reference for MHA, GQA, MQA,
// causal masks across query blocks, KV-cache offsets with spare capacity, kv_start, and rows with
// no visible key; the reference's gradients are themselves checked by central differences.
// Owned by the backend/cpu tests.
#include <cmath>

#include "attention_cases.h"
#include "reference.h"

namespace nnkit::test {
namespace {

class BackendAttention : public CpuBackendTest,
                         public ::testing::WithParamInterface<AttentionCase> {};

TEST_P(BackendAttention, ForwardBackwardMatchReference) {
  const AttentionCase& c = GetParam();
  const AttentionShape& s = c.shape;
  const int64_t qrows = s.batch * s.q_len, kvrows = s.batch * s.kv_capacity;
  std::vector<float> hq, hk, hv, hdo;
  Tensor q = random({qrows, s.n_heads * s.head_dim}, 100, 1.0f, &hq);
  Tensor k = random({kvrows, s.n_kv_heads * s.head_dim}, 101, 1.0f, &hk);
  Tensor v = random({kvrows, s.n_kv_heads * s.head_dim}, 102, 1.0f, &hv);
  Tensor dout = random(q.shape(), 103, 1.0f, &hdo);
  Tensor kv_start;
  if (!c.kv_start.empty()) kv_start = tensor_from_i32(be(), c.kv_start, {s.batch});
  Tensor out = be().empty(q.shape()), lse = be().empty({qrows, s.n_heads});
  Tensor dq = be().empty(q.shape()), dk = be().empty(k.shape()), dv = be().empty(v.shape());
  for (const Tensor* t : {&dq, &dk, &dv}) be().fill(*t, 7.0f);  // must be overwritten

  be().attention_forward(q, k, v, kv_start, out, lse, s);
  be().attention_backward(dout, q, k, v, kv_start, out, lse, dq, dk, dv, s);

  const std::vector<double> dd = to_double(hdo);
  const AttentionRef ref =
      attention_reference(to_double(hq), to_double(hk), to_double(hv), c.kv_start, s, &dd);
  expect_close(host(out), ref.out, 1e-5, 2e-6, "out");
  expect_close(host(lse), ref.lse, 1e-5, 2e-6, "lse");
  expect_close(host(dq), ref.dq, 1e-4, 5e-6, "dq");
  expect_close(host(dk), ref.dk, 1e-4, 5e-6, "dk");
  expect_close(host(dv), ref.dv, 1e-4, 5e-6, "dv");
}

// The reference's analytic gradients against central differences of its own forward, in double,
// for the loss L = sum(dout * out); and the backend's against differences of the fp32 forward.
TEST_P(BackendAttention, GradientsMatchFiniteDifferences) {
  const AttentionCase& c = GetParam();
  const AttentionShape& s = c.shape;
  const int64_t qrows = s.batch * s.q_len, kvrows = s.batch * s.kv_capacity;
  std::vector<double> q = to_double(random_values(size_t(qrows * s.n_heads * s.head_dim), 110));
  std::vector<double> k = to_double(random_values(size_t(kvrows * s.n_kv_heads * s.head_dim), 111));
  std::vector<double> v = to_double(random_values(size_t(kvrows * s.n_kv_heads * s.head_dim), 112));
  const std::vector<double> dout = to_double(random_values(q.size(), 113));
  const AttentionRef ref = attention_reference(q, k, v, c.kv_start, s, &dout);
  auto loss = [&]() {
    const AttentionRef r = attention_reference(q, k, v, c.kv_start, s);
    double l = 0.0;
    for (size_t i = 0; i < dout.size(); ++i) l += dout[i] * r.out[i];
    return l;
  };
  const double h = 1e-5;
  auto check = [&](std::vector<double>& x, const std::vector<double>& grad, const char* name) {
    for (size_t n = 0; n < 6; ++n) {
      const size_t i = (n * 7919 + 13) % x.size();
      const double saved = x[i];
      x[i] = saved + h;
      const double up = loss();
      x[i] = saved - h;
      const double down = loss();
      x[i] = saved;
      EXPECT_NEAR((up - down) / (2 * h), grad[i], 1e-7 + 1e-6 * std::abs(grad[i]))
          << c.name << " d" << name << "[" << i << "]";
    }
  };
  check(q, ref.dq, "q");
  check(k, ref.dk, "k");
  check(v, ref.dv, "v");

  // fp32 backend: a coarser step and tolerance, on a few entries of q.
  std::vector<float> fq(q.begin(), q.end());
  Tensor tk = tensor_from(be(), std::vector<float>(k.begin(), k.end()),
                          {kvrows, s.n_kv_heads * s.head_dim});
  Tensor tv = tensor_from(be(), std::vector<float>(v.begin(), v.end()), tk.shape());
  Tensor kv_start;
  if (!c.kv_start.empty()) kv_start = tensor_from_i32(be(), c.kv_start, {s.batch});
  Tensor out = be().empty({qrows, s.n_heads * s.head_dim}), lse = be().empty({qrows, s.n_heads});
  auto backend_loss = [&]() {
    be().attention_forward(tensor_from(be(), fq, out.shape()), tk, tv, kv_start, out, lse, s);
    const std::vector<float> o = host(out);
    double l = 0.0;
    for (size_t i = 0; i < o.size(); ++i) l += dout[i] * o[i];
    return l;
  };
  for (size_t n = 0; n < 3; ++n) {
    const size_t i = (n * 104729 + 5) % fq.size();
    const float saved = fq[i];
    fq[i] = saved + 1e-2f;
    const double up = backend_loss();
    fq[i] = saved - 1e-2f;
    const double down = backend_loss();
    fq[i] = saved;
    EXPECT_NEAR((up - down) / 2e-2, ref.dq[i], 2e-3) << c.name << " fp32 dq[" << i << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BackendAttention, ::testing::ValuesIn(common_attention_cases()),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace nnkit::test
