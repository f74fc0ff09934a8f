// Purpose: backend/cpu's author op set (appended in ABI 3): elementwise mul, sign, clamp,
// add_scalar, the unary activations forward and backward, and the SGD-momentum and Lion
// updates. Owned by backend/cpu. One pass each over f32 host memory; threads only past the
// parallel grain (as elementwise.cpp). Formulas are the contracts in nnkit/backend.h.
#include <cmath>
#include <string>

#include "checks.h"
#include "cpu_backend.h"

namespace nnkit::cpu {

namespace {

// out and every input: f32 host tensors of out's shape.
void expect_elementwise(const char* op, const Tensor& out, const char* in_name, const Tensor& in) {
  expect_dtype(op, "out", out, DType::kF32);
  expect_dtype(op, in_name, in, DType::kF32);
  expect_same_shape(op, "out", out, in_name, in);
}

// f(x[i]) -> out[i] for every element.
template <typename F>
void map_unary(const Tensor& out, const Tensor& x, F&& f) {
  float* o = ptr<float>(out);
  const float* in = ptr<const float>(x);
  const int64_t n = out.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = f(in[i]);
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

float activate(Activation act, float x) {
  switch (act) {
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    case Activation::kGelu:
      return static_cast<float>(0.5 * x * (1.0 + std::erf(x * kInvSqrt2)));
    case Activation::kSilu:
      return static_cast<float>(x / (1.0 + std::exp(-double(x))));
    case Activation::kReluSquared:
      return x > 0.0f ? x * x : 0.0f;
  }
  return x;
}

// d act / dx at x.
float derivative(Activation act, float x) {
  switch (act) {
    case Activation::kRelu:
      return x > 0.0f ? 1.0f : 0.0f;
    case Activation::kGelu: {
      const double xd = x;
      return static_cast<float>(0.5 * (1.0 + std::erf(xd * kInvSqrt2)) +
                                xd * kInvSqrt2Pi * std::exp(-0.5 * xd * xd));
    }
    case Activation::kSilu: {
      const double s = 1.0 / (1.0 + std::exp(-double(x)));
      return static_cast<float>(s * (1.0 + double(x) * (1.0 - s)));
    }
    case Activation::kReluSquared:
      return x > 0.0f ? 2.0f * x : 0.0f;
  }
  return 1.0f;
}

void expect_activation(const char* op, Activation act) {
  if (static_cast<uint8_t>(act) > static_cast<uint8_t>(Activation::kReluSquared)) {
    shape_fail(op, "unknown activation " + std::to_string(static_cast<int>(act)));
  }
}

void expect_update(const char* op, const Tensor& param, const Tensor& grad, const Tensor& state,
                   const char* state_name) {
  expect_dtype(op, "param", param, DType::kF32);
  expect_dtype(op, "grad", grad, DType::kF32);
  expect_dtype(op, state_name, state, DType::kF32);
  expect_same_shape(op, "param", param, "grad", grad);
  expect_same_shape(op, "param", param, state_name, state);
}

}  // namespace

void CpuBackend::mul(const Tensor& out, const Tensor& a, const Tensor& b) {
  expect_elementwise("mul", out, "a", a);
  expect_elementwise("mul", out, "b", b);
  float* o = ptr<float>(out);
  const float* pa = ptr<const float>(a);
  const float* pb = ptr<const float>(b);
  const int64_t n = out.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = pa[i] * pb[i];
}

void CpuBackend::sign(const Tensor& out, const Tensor& x) {
  expect_elementwise("sign", out, "x", x);
  map_unary(out, x, [](float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : v * 0.0f); });
}

void CpuBackend::clamp(const Tensor& out, const Tensor& x, float lo, float hi) {
  expect_elementwise("clamp", out, "x", x);
  if (!(lo <= hi)) {
    shape_fail("clamp",
               "lo (" + std::to_string(lo) + ") must not exceed hi (" + std::to_string(hi) + ")");
  }
  // Comparisons written so that NaN falls through both and stays NaN.
  map_unary(out, x, [lo, hi](float v) { return v < lo ? lo : (v > hi ? hi : v); });
}

void CpuBackend::add_scalar(const Tensor& out, const Tensor& x, float alpha) {
  expect_elementwise("add_scalar", out, "x", x);
  map_unary(out, x, [alpha](float v) { return v + alpha; });
}

void CpuBackend::activation_forward(Activation act, const Tensor& x, const Tensor& y) {
  expect_elementwise("activation_forward", y, "x", x);
  expect_activation("activation_forward", act);
  map_unary(y, x, [act](float v) { return activate(act, v); });
}

void CpuBackend::activation_backward(Activation act, const Tensor& dy, const Tensor& x,
                                     const Tensor& dx) {
  expect_elementwise("activation_backward", dx, "dy", dy);
  expect_elementwise("activation_backward", dx, "x", x);
  expect_activation("activation_backward", act);
  if (dx.raw() == x.raw() && dx.numel() > 0) {
    shape_fail("activation_backward", "dx may alias dy, not x");
  }
  float* out = ptr<float>(dx);
  const float* g = ptr<const float>(dy);
  const float* in = ptr<const float>(x);
  const int64_t n = dx.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] * derivative(act, in[i]);
}

void CpuBackend::sgd_momentum_update(const Tensor& param, const Tensor& grad,
                                     const Tensor& momentum, const MomentumStep& step) {
  expect_update("sgd_momentum_update", param, grad, momentum, "momentum");
  float* p = ptr<float>(param);
  float* m = ptr<float>(momentum);
  const float* g = ptr<const float>(grad);
  const int64_t n = param.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = step.grad_scale * g[i];
    m[i] = step.beta1 * m[i] + gi;
    p[i] -= step.lr * (m[i] + step.weight_decay * p[i]);
  }
}

void CpuBackend::lion_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                             const MomentumStep& step) {
  expect_update("lion_update", param, grad, m, "m");
  float* p = ptr<float>(param);
  float* mv = ptr<float>(m);
  const float* g = ptr<const float>(grad);
  const int64_t n = param.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = step.grad_scale * g[i];
    const float c = step.beta1 * mv[i] + (1.0f - step.beta1) * gi;
    const float s = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
    p[i] -= step.lr * (s + step.weight_decay * p[i]);
    mv[i] = step.beta2 * mv[i] + (1.0f - step.beta2) * gi;
  }
}

}  // namespace nnkit::cpu
