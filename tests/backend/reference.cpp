// Purpose: see reference.h. Owned by the backend/cpu tests.
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nnkit::test {

Tensor CpuBackendTest::random(const Shape& shape, uint64_t seed, float scale,
                              std::vector<float>* host) {
  std::vector<float> values = random_values(static_cast<size_t>(shape_numel(shape)), seed, scale);
  Tensor t = tensor_from(be(), values, shape);
  if (host != nullptr) *host = std::move(values);
  return t;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double rtol,
                  double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      ASSERT_EQ(got[i], static_cast<float>(want[i])) << what << " at " << i;
      continue;
    }
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    ASSERT_LE(err, atol + rtol * std::abs(want[i]))
        << what << " at " << i << ": got " << got[i] << ", want " << want[i];
  }
}

std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

AttentionRef attention_reference(const std::vector<double>& q, const std::vector<double>& k,
                                 const std::vector<double>& v, const std::vector<int32_t>& kv_start,
                                 const AttentionShape& s, const std::vector<double>* dout) {
  const int64_t D = s.head_dim, H = s.n_heads, G = s.n_heads / s.n_kv_heads;
  const int64_t qld = H * D, kld = s.n_kv_heads * D;
  AttentionRef r;
  r.out.assign(q.size(), 0.0);
  r.lse.assign(static_cast<size_t>(s.batch * s.q_len * H), 0.0);
  if (dout != nullptr) {
    r.dq.assign(q.size(), 0.0);
    r.dk.assign(k.size(), 0.0);
    r.dv.assign(v.size(), 0.0);
  }
  std::vector<double> p;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t ks = kv_start.empty() ? 0 : std::max<int64_t>(0, kv_start[size_t(b)]);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / G;
      for (int64_t t = 0; t < s.q_len; ++t) {
        const int64_t qrow = (b * s.q_len + t) * qld + h * D;
        const int64_t ke = std::min(s.kv_len, s.q_offset + t + 1);
        auto krow = [&](int64_t j) { return (b * s.kv_capacity + j) * kld + kh * D; };
        double& lse = r.lse[size_t((b * s.q_len + t) * H + h)];
        if (ke <= ks) {
          lse = -std::numeric_limits<double>::infinity();
          continue;
        }
        p.assign(size_t(ke - ks), 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = ks; j < ke; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += q[size_t(qrow + d)] * k[size_t(krow(j) + d)];
          p[size_t(j - ks)] = s.scale * dot;
          mx = std::max(mx, p[size_t(j - ks)]);
        }
        double sum = 0.0;
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (double& x : p) x /= sum;
        lse = mx + std::log(sum);
        for (int64_t j = ks; j < ke; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            r.out[size_t(qrow + d)] += p[size_t(j - ks)] * v[size_t(krow(j) + d)];
          }
        }
        if (dout == nullptr) continue;
        // dS_j = P_j (dout.v_j - dout.out); dq = scale sum dS_j k_j; dk_j, dv_j accumulate.
        double delta = 0.0;
        for (int64_t d = 0; d < D; ++d)
          delta += (*dout)[size_t(qrow + d)] * r.out[size_t(qrow + d)];
        for (int64_t j = ks; j < ke; ++j) {
          double dp = 0.0;
          for (int64_t d = 0; d < D; ++d) dp += (*dout)[size_t(qrow + d)] * v[size_t(krow(j) + d)];
          const double ds = p[size_t(j - ks)] * (dp - delta);
          for (int64_t d = 0; d < D; ++d) {
            r.dq[size_t(qrow + d)] += s.scale * ds * k[size_t(krow(j) + d)];
            r.dk[size_t(krow(j) + d)] += s.scale * ds * q[size_t(qrow + d)];
            r.dv[size_t(krow(j) + d)] += p[size_t(j - ks)] * (*dout)[size_t(qrow + d)];
          }
        }
      }
    }
  }
  return r;
}

}  // namespace nnkit::test
