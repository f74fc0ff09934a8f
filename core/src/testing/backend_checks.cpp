// Purpose: the backend op list of `nnkit check-plugin backend/NAME`: each op run on the backend
// against a host reference in double, f32 tensors, with the tolerance written next to it. The
// same list covers the CPU backend (where the references are the only other opinion) and any
// third-party backend.
#include <cmath>
#include <functional>

#include "testing/harness.h"

namespace nnkit::testing {

using detail::Host;

namespace {

constexpr double kAbs = 1e-5;
constexpr double kRel = 1e-5;

struct OpCase {
  const char* name;
  std::function<CheckResult(Backend&, const std::string&)> run;
};

// Values already rounded to f32, so that exact ops (copies, gathers) compare exactly.
Host rnd(size_t n, uint64_t salt, double scale = 1.0) {
  Host values = detail::random_host(n, 7, salt, scale);
  for (double& v : values) v = static_cast<float>(v);
  return values;
}

Tensor up(Backend& b, const Host& v, const Shape& s) {
  return detail::upload(b, v, s);
}

Host down(Backend& b, const Tensor& t) {
  return detail::download(b, t);
}

CheckResult gemm_case(Backend& b, const std::string& name, bool ta, bool tb) {
  const int64_t M = 5, K = 7, N = 3;
  const Host a = rnd(M * K, 1), bm = rnd(K * N, 2), c0 = rnd(M * N, 3);
  Tensor at = up(b, a, ta ? Shape{K, M} : Shape{M, K});
  Tensor bt = up(b, bm, tb ? Shape{N, K} : Shape{K, N});
  Tensor ct = up(b, c0, {M, N});
  const float alpha = 0.7f, beta = 0.3f;
  b.gemm(at, ta, bt, tb, ct, alpha, beta);
  Host expected(M * N);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double sum = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double av = ta ? a[k * M + i] : a[i * K + k];
        const double bv = tb ? bm[j * K + k] : bm[k * N + j];
        sum += av * bv;
      }
      expected[i * N + j] = alpha * sum + beta * c0[i * N + j];
    }
  }
  return detail::compare_row(name, down(b, ct), expected, kAbs, kRel);
}

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = {
      {"copy_from_host / copy_to_host",
       [](Backend& b, const std::string& n) {
         const Host x = rnd(37, 10);
         return detail::compare_row(n, down(b, up(b, x, {37})), Host(x.begin(), x.end()), 0, 0);
       }},
      {"fill",
       [](Backend& b, const std::string& n) {
         Tensor t = b.empty({9});
         b.fill(t, 1.25f);
         return detail::compare_row(n, down(b, t), Host(9, 1.25), 0, 0);
       }},
      {"add",
       [](Backend& b, const std::string& n) {
         const Host x = rnd(12, 11), y = rnd(12, 12);
         Tensor out = b.empty({3, 4});
         b.add(out, up(b, x, {3, 4}), up(b, y, {3, 4}));
         Host e(12);
         for (size_t i = 0; i < 12; ++i) e[i] = x[i] + y[i];
         return detail::compare_row(n, down(b, out), e, kAbs, kRel);
       }},
      {"axpy",
       [](Backend& b, const std::string& n) {
         const Host x = rnd(12, 13), y = rnd(12, 14);
         Tensor yt = up(b, y, {12});
         b.axpy(yt, -0.5f, up(b, x, {12}));
         Host e(12);
         for (size_t i = 0; i < 12; ++i) e[i] = y[i] - 0.5 * x[i];
         return detail::compare_row(n, down(b, yt), e, kAbs, kRel);
       }},
      {"scale",
       [](Backend& b, const std::string& n) {
         const Host x = rnd(12, 15);
         Tensor t = up(b, x, {12});
         b.scale(t, 3.0f);
         Host e(12);
         for (size_t i = 0; i < 12; ++i) e[i] = 3.0 * x[i];
         return detail::compare_row(n, down(b, t), e, kAbs, kRel);
       }},
      {"gemm", [](Backend& b, const std::string& n) { return gemm_case(b, n, false, false); }},
      {"gemm (a^T)", [](Backend& b, const std::string& n) { return gemm_case(b, n, true, false); }},
      {"gemm (b^T)", [](Backend& b, const std::string& n) { return gemm_case(b, n, false, true); }},
      {"gemm (a^T b^T)",
       [](Backend& b, const std::string& n) { return gemm_case(b, n, true, true); }},
      {"rmsnorm_forward",
       [](Backend& b, const std::string& n) {
         const int64_t R = 3, C = 8;
         const Host x = rnd(R * C, 16), w = rnd(C, 17);
         Tensor y = b.empty({R, C}), rstd = b.empty({R});
         b.rmsnorm_forward(up(b, x, {R, C}), up(b, w, {C}), 1e-5f, y, rstd);
         Host e(R * C);
         for (int64_t r = 0; r < R; ++r) {
           double ms = 0.0;
           for (int64_t c = 0; c < C; ++c) ms += x[r * C + c] * x[r * C + c];
           const double s = 1.0 / std::sqrt(ms / C + 1e-5);
           for (int64_t c = 0; c < C; ++c) e[r * C + c] = x[r * C + c] * s * w[c];
         }
         return detail::compare_row(n, down(b, y), e, kAbs, 1e-4);
       }},
      {"softmax_rows",
       [](Backend& b, const std::string& n) {
         const int64_t R = 3, C = 7;
         const Host x = rnd(R * C, 18, 4.0);
         Tensor y = b.empty({R, C});
         b.softmax_rows(up(b, x, {R, C}), y);
         Host e(R * C);
         for (int64_t r = 0; r < R; ++r) {
           double top = -INFINITY, sum = 0.0;
           for (int64_t c = 0; c < C; ++c) top = std::max(top, x[r * C + c]);
           for (int64_t c = 0; c < C; ++c) sum += std::exp(x[r * C + c] - top);
           for (int64_t c = 0; c < C; ++c) e[r * C + c] = std::exp(x[r * C + c] - top) / sum;
         }
         return detail::compare_row(n, down(b, y), e, kAbs, 1e-4);
       }},
      {"swiglu_forward",
       [](Backend& b, const std::string& n) {
         const Host g = rnd(10, 19, 3.0), u = rnd(10, 20);
         Tensor out = b.empty({2, 5});
         b.swiglu_forward(up(b, g, {2, 5}), up(b, u, {2, 5}), out);
         Host e(10);
         for (size_t i = 0; i < 10; ++i) e[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
         return detail::compare_row(n, down(b, out), e, kAbs, 1e-4);
       }},
      {"gather_rows (index -1 = zero row)",
       [](Backend& b, const std::string& n) {
         const Host src = rnd(4 * 3, 21);
         const Host index = {2, 0, -1, 3, 2};
         Tensor dst = b.empty({5, 3});
         b.gather_rows(up(b, src, {4, 3}), detail::upload(b, index, {5}, DType::kI32), dst);
         Host e;
         for (double i : index) {
           for (int c = 0; c < 3; ++c) e.push_back(i < 0 ? 0.0 : src[size_t(i) * 3 + c]);
         }
         return detail::compare_row(n, down(b, dst), e, 0, 0);
       }},
      {"scatter_add_rows (index -1 skipped)",
       [](Backend& b, const std::string& n) {
         const Host src = rnd(5 * 3, 22), w = rnd(5, 23), d0 = rnd(4 * 3, 24);
         const Host index = {1, 3, -1, 1, 0};
         Tensor dst = up(b, d0, {4, 3});
         b.scatter_add_rows(up(b, src, {5, 3}), detail::upload(b, index, {5}, DType::kI32),
                            up(b, w, {5}), dst);
         Host e = d0;
         for (size_t r = 0; r < 5; ++r) {
           if (index[r] < 0) continue;
           for (int c = 0; c < 3; ++c) e[size_t(index[r]) * 3 + c] += w[r] * src[r * 3 + c];
         }
         return detail::compare_row(n, down(b, dst), e, kAbs, kRel);
       }},
      {"moe_swiglu_experts_padded (padded decode layout, a dropped slot, a padding row)",
       [](Backend& b, const std::string& n) {
         // 3 tokens x top-2 over 3 experts of capacity 2: expert 0 keeps slots 0 and 3 (slot 4,
         // its third, is dropped), expert 1 has slot 5 and a padding row, expert 2 slots 1, 2.
         const int64_t T = 3, E = 3, cap = 2, C = 4, F = 6;
         const Host token = {0, 1, 2, -1, 0, 1}, slot = {0, 3, 5, -1, 1, 2};
         const Host kept = {0, 2, 3, 5};
         const Host x = rnd(T * C, 25), gate = rnd(T * 2, 26);
         std::vector<Host> wg, wu, wd;
         std::vector<Tensor> tg, tu, td;
         for (int64_t e = 0; e < E; ++e) {
           wg.push_back(rnd(F * C, 27 + 3 * uint64_t(e)));
           wu.push_back(rnd(F * C, 28 + 3 * uint64_t(e)));
           wd.push_back(rnd(C * F, 29 + 3 * uint64_t(e)));
           tg.push_back(up(b, wg.back(), {F, C}));
           tu.push_back(up(b, wu.back(), {F, C}));
           td.push_back(up(b, wd.back(), {C, F}));
         }
         Tensor y = b.empty({T, C});
         b.moe_swiglu_experts_padded(
             up(b, x, {T, C}), detail::upload(b, token, {E * cap}, DType::kI32),
             detail::upload(b, slot, {E * cap}, DType::kI32), up(b, gate, {T * 2}), tg, tu, td,
             detail::upload(b, kept, {E + 1}, DType::kI32), cap, y);
         Host e(static_cast<size_t>(T * C), 0.0);
         for (int64_t r = 0; r < E * cap; ++r) {
           if (token[size_t(r)] < 0) continue;
           const auto t = size_t(token[size_t(r)]);
           const auto ex = size_t(r / cap);
           Host a(static_cast<size_t>(F));
           for (int64_t f = 0; f < F; ++f) {
             double h = 0.0, u = 0.0;
             for (int64_t c = 0; c < C; ++c) {
               h += x[t * C + size_t(c)] * wg[ex][size_t(f * C + c)];
               u += x[t * C + size_t(c)] * wu[ex][size_t(f * C + c)];
             }
             a[size_t(f)] = static_cast<float>(h / (1.0 + std::exp(-h)) * u);
           }
           for (int64_t c = 0; c < C; ++c) {
             double sum = 0.0;
             for (int64_t f = 0; f < F; ++f) sum += a[size_t(f)] * wd[ex][size_t(c * F + f)];
             e[t * C + size_t(c)] += gate[size_t(slot[size_t(r)])] * sum;
           }
         }
         return detail::compare_row(n, down(b, y), e, kAbs, 1e-4);
       }},
      {"cross_entropy_forward",
       [](Backend& b, const std::string& n) {
         const int64_t R = 3, V = 6;
         const Host x = rnd(R * V, 25, 3.0);
         const Host targets = {4, -1, 0};
         Tensor losses = b.empty({R});
         b.cross_entropy_forward(up(b, x, {R, V}), detail::upload(b, targets, {R}, DType::kI32),
                                 losses);
         Host e(R, 0.0);
         for (int64_t r = 0; r < R; ++r) {
           if (targets[r] < 0) continue;
           double top = -INFINITY, sum = 0.0;
           for (int64_t c = 0; c < V; ++c) top = std::max(top, x[r * V + c]);
           for (int64_t c = 0; c < V; ++c) sum += std::exp(x[r * V + c] - top);
           e[r] = std::log(sum) + top - x[r * V + int64_t(targets[r])];
         }
         return detail::compare_row(n, down(b, losses), e, kAbs, 1e-4);
       }},
      {"adamw_update",
       [](Backend& b, const std::string& n) {
         const Host p0 = rnd(6, 26), g = rnd(6, 27), m0 = rnd(6, 28, 0.1);
         Host v0 = rnd(6, 29, 0.1);
         for (double& v : v0) v = std::abs(v);
         Tensor p = up(b, p0, {6}), m = up(b, m0, {6}), v = up(b, v0, {6});
         AdamWStep s;
         s.lr = 0.01f, s.beta1 = 0.9f, s.beta2 = 0.95f, s.eps = 1e-8f, s.weight_decay = 0.1f;
         s.grad_scale = 0.5f, s.step = 3;
         b.adamw_update(p, up(b, g, {6}), m, v, s);
         Host e(6);
         for (size_t i = 0; i < 6; ++i) {
           const double gi = 0.5 * g[i];
           const double mi = 0.9 * m0[i] + 0.1 * gi, vi = 0.95 * v0[i] + 0.05 * gi * gi;
           const double mh = mi / (1 - std::pow(0.9, 3)), vh = vi / (1 - std::pow(0.95, 3));
           e[i] = p0[i] - 0.01 * (mh / (std::sqrt(vh) + 1e-8) + 0.1 * p0[i]);
         }
         return detail::compare_row(n, down(b, p), e, 1e-6, 1e-5);
       }},
      // ---- the author op set (ABI 3)
      {"mul",
       [](Backend& b, const std::string& n) {
         const Host x = rnd(12, 30), y = rnd(12, 31);
         Tensor out = b.empty({12});
         b.mul(out, up(b, x, {12}), up(b, y, {12}));
         Host e(12);
         for (size_t i = 0; i < 12; ++i) e[i] = x[i] * y[i];
         return detail::compare_row(n, down(b, out), e, kAbs, kRel);
       }},
      {"sign, clamp, add_scalar",
       [](Backend& b, const std::string& n) {
         Host x = rnd(12, 32, 3.0);
         x[0] = 0.0;
         Tensor xt = up(b, x, {12}), s = b.empty({12}), c = b.empty({12}), a = b.empty({12});
         b.sign(s, xt);
         b.clamp(c, xt, -1.0f, 0.5f);
         b.add_scalar(a, xt, 0.25f);
         Host got = down(b, s), e;
         for (double v : down(b, c)) got.push_back(v);
         for (double v : down(b, a)) got.push_back(v);
         for (double v : x) e.push_back(v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0));
         for (double v : x) e.push_back(std::min(std::max(v, -1.0), 0.5));
         for (double v : x) e.push_back(v + 0.25);
         return detail::compare_row(n, got, e, kAbs, kRel);
       }},
      {"activation_forward / activation_backward",
       [](Backend& b, const std::string& n) {
         const Host x = rnd(16, 33, 3.0), dy = rnd(16, 34);
         Host got, e;
         for (Activation act :
              {Activation::kRelu, Activation::kGelu, Activation::kSilu, Activation::kReluSquared}) {
           Tensor xt = up(b, x, {16}), y = b.empty({16}), dx = b.empty({16});
           b.activation_forward(act, xt, y);
           b.activation_backward(act, up(b, dy, {16}), xt, dx);
           for (double v : down(b, y)) got.push_back(v);
           for (double v : down(b, dx)) got.push_back(v);
           for (size_t i = 0; i < 16; ++i) {
             const double v = x[i], s = 1.0 / (1.0 + std::exp(-v));
             const double phi = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
             e.push_back(act == Activation::kRelu   ? (v > 0 ? v : 0)
                         : act == Activation::kGelu ? v * phi
                         : act == Activation::kSilu ? v * s
                                                    : (v > 0 ? v * v : 0));
           }
           for (size_t i = 0; i < 16; ++i) {
             const double v = x[i], s = 1.0 / (1.0 + std::exp(-v));
             const double phi = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
             const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * 3.14159265358979323846);
             e.push_back(dy[i] * (act == Activation::kRelu   ? (v > 0 ? 1.0 : 0.0)
                                  : act == Activation::kGelu ? phi + v * pdf
                                  : act == Activation::kSilu ? s * (1 + v * (1 - s))
                                                             : (v > 0 ? 2 * v : 0.0)));
           }
         }
         return detail::compare_row(n, got, e, 1e-5, 1e-5);
       }},
      {"sgd_momentum_update / lion_update",
       [](Backend& b, const std::string& n) {
         const Host p0 = rnd(8, 35), g = rnd(8, 36), m0 = rnd(8, 37, 0.1);
         MomentumStep s;
         s.lr = 0.01f, s.beta1 = 0.9f, s.beta2 = 0.99f, s.weight_decay = 0.1f, s.grad_scale = 0.5f;
         Tensor p1 = up(b, p0, {8}), m1 = up(b, m0, {8}), p2 = up(b, p0, {8}), m2 = up(b, m0, {8});
         b.sgd_momentum_update(p1, up(b, g, {8}), m1, s);
         b.lion_update(p2, up(b, g, {8}), m2, s);
         Host got = down(b, p1), e;
         for (double v : down(b, p2)) got.push_back(v);
         for (size_t i = 0; i < 8; ++i) {
           const double m = 0.9 * m0[i] + 0.5 * g[i];
           e.push_back(p0[i] - 0.01 * (m + 0.1 * p0[i]));
         }
         for (size_t i = 0; i < 8; ++i) {
           const double c = 0.9 * m0[i] + 0.1 * 0.5 * g[i];
           e.push_back(p0[i] - 0.01 * (((c > 0) - (c < 0)) + 0.1 * p0[i]));
         }
         return detail::compare_row(n, got, e, 1e-6, 1e-5);
       }},
  };
  return cases;
}

}  // namespace

std::vector<CheckResult> check_backend_ops(Backend& backend) {
  std::vector<CheckResult> rows;
  for (const OpCase& op : op_cases()) {
    const std::string name = std::string("op ") + op.name;
    detail::guarded(rows, name, [&] { rows.push_back(op.run(backend, name)); });
  }
  return rows;
}

}  // namespace nnkit::testing
