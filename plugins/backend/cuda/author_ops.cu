// Purpose: backend/cuda's author op set (appended in ABI 3): elementwise mul, sign, clamp,
// add_scalar, the unary activations forward and backward (f32, bf16, f16 storage), and the
// SGD-momentum and Lion updates (f32). Owned by backend/cuda. Kernels then launchers, like
// elementwise.cu: one memory-bound grid-stride pass over 16-byte packs when every pointer is
// aligned, widening to f32 and rounding once on store (kernel_utils.cuh). The formulas are the
// contracts in nnkit/backend.h and match plugins/backend/cpu/author_ops.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

// ---- per-element functions (functors: nvcc builds here without --extended-lambda) ----------
struct SignOp {
  __device__ float operator()(float v) const {
    return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : v * 0.0f);  // 0 and NaN stay themselves
  }
};
struct ClampOp {
  float lo, hi;
  __device__ float operator()(float v) const { return v < lo ? lo : (v > hi ? hi : v); }
};
struct AddScalarOp {
  float alpha;
  __device__ float operator()(float v) const { return v + alpha; }
};
struct ActivationOp {
  Activation act;
  __device__ float operator()(float x) const {
    switch (act) {
      case Activation::kRelu:
        return x > 0.0f ? x : 0.0f;
      case Activation::kGelu:
        // In double, as the CPU: in f32, 1 + erf(x / sqrt 2) cancels for negative x (x = -3
        // loses ~10 of its 24 bits), far outside the parity bound.
        return static_cast<float>(0.5 * double(x) * (1.0 + erf(double(x) * 0.70710678118654752)));
      case Activation::kSilu:
        return static_cast<float>(double(x) / (1.0 + exp(-double(x))));  // as the CPU
      case Activation::kReluSquared:
        return x > 0.0f ? x * x : 0.0f;
    }
    return x;
  }
};
// dx = dy * act'(x).
struct ActivationGradOp {
  Activation act;
  __device__ float operator()(float dy, float x) const {
    switch (act) {
      case Activation::kRelu:
        return x > 0.0f ? dy : 0.0f;
      case Activation::kGelu: {
        // The CPU's rule: the derivative in double (the forward's cancellation), rounded, times dy.
        const double xd = x;
        const float d = static_cast<float>(0.5 * (1.0 + erf(xd * 0.70710678118654752)) +
                                           xd * 0.39894228040143268 * exp(-0.5 * xd * xd));
        return dy * d;
      }
      case Activation::kSilu: {
        const double s = 1.0 / (1.0 + exp(-double(x)));
        return dy * static_cast<float>(s * (1.0 + double(x) * (1.0 - s)));
      }
      case Activation::kReluSquared:
        return x > 0.0f ? dy * 2.0f * x : 0.0f;
    }
    return dy;
  }
};
struct MulOp {
  __device__ float operator()(float a, float b) const { return a * b; }
};

// ---- kernels --------------------------------------------------------------------------------
// out = f(x); out may alias x (each pack is read before it is written, by one thread).
template <typename T, int kWidth, typename F>
__global__ void unary_kernel(T* out, const T* x, int64_t n, F f) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float v[kW];
    load_floats<kW>(x + i, v);
#pragma unroll
    for (int e = 0; e < kW; ++e) v[e] = f(v[e]);
    store_floats<kW>(out + i, v);
  });
}

// out = f(a, b); out may alias a or b.
template <typename T, int kWidth, typename F>
__global__ void binary_kernel(T* out, const T* a, const T* b, int64_t n, F f) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float x[kW], y[kW];
    load_floats<kW>(a + i, x);
    load_floats<kW>(b + i, y);
#pragma unroll
    for (int e = 0; e < kW; ++e) x[e] = f(x[e], y[e]);
    store_floats<kW>(out + i, x);
  });
}

__global__ void sgd_momentum_kernel(float* p, const float* g, float* m, int64_t n, MomentumStep s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = s.grad_scale * g[i];
    const float mi = s.beta1 * m[i] + gi;
    m[i] = mi;
    p[i] -= s.lr * (mi + s.weight_decay * p[i]);
  }
}

__global__ void lion_kernel(float* p, const float* g, float* m, int64_t n, MomentumStep s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = s.grad_scale * g[i];
    const float mi = m[i];
    const float c = s.beta1 * mi + (1.0f - s.beta1) * gi;
    const float sign = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
    p[i] -= s.lr * (sign + s.weight_decay * p[i]);
    m[i] = s.beta2 * mi + (1.0f - s.beta2) * gi;
  }
}

// ---- launchers ------------------------------------------------------------------------------
template <typename F>
void launch_unary(cudaStream_t stream, const char* op, const Tensor& out, const Tensor& x, F f) {
  kChecks.float_dtype(op, "out", out, kFloatDTypes);
  kChecks.dtype_as(op, "x", x, "out", out);
  kChecks.same_shape(op, "out", out, "x", x);
  const int64_t n = out.numel();
  if (n == 0) return;
  const bool packed = aligned16(out.raw()) && aligned16(x.raw());
  dispatch_float(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      unary_kernel<T, kW, F>
          <<<grid_for_packs<kW>(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<T>(x), n, f);
      NNKIT_CUDA_CHECK_LAUNCH(unary_kernel);
    });
  });
}

template <typename F>
void launch_binary(cudaStream_t stream, const char* op, const Tensor& out, const char* a_name,
                   const Tensor& a, const char* b_name, const Tensor& b, F f) {
  kChecks.float_dtype(op, "out", out, kFloatDTypes);
  kChecks.dtype_as(op, a_name, a, "out", out);
  kChecks.dtype_as(op, b_name, b, "out", out);
  kChecks.same_shape(op, "out", out, a_name, a);
  kChecks.same_shape(op, "out", out, b_name, b);
  const int64_t n = out.numel();
  if (n == 0) return;
  const bool packed = aligned16(out.raw()) && aligned16(a.raw()) && aligned16(b.raw());
  dispatch_float(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      binary_kernel<T, kW, F>
          <<<grid_for_packs<kW>(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<T>(a), ptr<T>(b), n, f);
      NNKIT_CUDA_CHECK_LAUNCH(binary_kernel);
    });
  });
}

void expect_activation(const char* op, Activation act) {
  if (static_cast<uint8_t>(act) > static_cast<uint8_t>(Activation::kReluSquared)) {
    kChecks.fail(op, "unknown activation " + std::to_string(static_cast<int>(act)));
  }
}

void expect_update(const char* op, const Tensor& param, const Tensor& grad, const Tensor& state,
                   const char* state_name) {
  kChecks.dtype(op, "param", param, DType::kF32);
  kChecks.dtype(op, "grad", grad, DType::kF32);
  kChecks.dtype(op, state_name, state, DType::kF32);
  kChecks.same_shape(op, "param", param, "grad", grad);
  kChecks.same_shape(op, "param", param, state_name, state);
}

}  // namespace

void CudaBackend::mul(const Tensor& out, const Tensor& a, const Tensor& b) {
  OpScope op_scope(profiler_.get(), "mul");
  launch_binary(stream_, "mul", out, "a", a, "b", b, MulOp{});
}

void CudaBackend::sign(const Tensor& out, const Tensor& x) {
  OpScope op_scope(profiler_.get(), "sign");
  launch_unary(stream_, "sign", out, x, SignOp{});
}

void CudaBackend::clamp(const Tensor& out, const Tensor& x, float lo, float hi) {
  OpScope op_scope(profiler_.get(), "clamp");
  if (!(lo <= hi)) {
    kChecks.fail("clamp",
                 "lo (" + std::to_string(lo) + ") must not exceed hi (" + std::to_string(hi) + ")");
  }
  launch_unary(stream_, "clamp", out, x, ClampOp{lo, hi});
}

void CudaBackend::add_scalar(const Tensor& out, const Tensor& x, float alpha) {
  OpScope op_scope(profiler_.get(), "add_scalar");
  launch_unary(stream_, "add_scalar", out, x, AddScalarOp{alpha});
}

void CudaBackend::activation_forward(Activation act, const Tensor& x, const Tensor& y) {
  OpScope op_scope(profiler_.get(), "activation_forward");
  expect_activation("activation_forward", act);
  launch_unary(stream_, "activation_forward", y, x, ActivationOp{act});
}

void CudaBackend::activation_backward(Activation act, const Tensor& dy, const Tensor& x,
                                      const Tensor& dx) {
  OpScope op_scope(profiler_.get(), "activation_backward");
  expect_activation("activation_backward", act);
  if (dx.defined() && x.defined() && dx.raw() == x.raw() && dx.numel() > 0) {
    kChecks.fail("activation_backward", "dx may alias dy, not x");
  }
  launch_binary(stream_, "activation_backward", dx, "dy", dy, "x", x, ActivationGradOp{act});
}

void CudaBackend::sgd_momentum_update(const Tensor& param, const Tensor& grad,
                                      const Tensor& momentum, const MomentumStep& step) {
  OpScope op_scope(profiler_.get(), "sgd_momentum_update");
  expect_update("sgd_momentum_update", param, grad, momentum, "momentum");
  const int64_t n = param.numel();
  if (n == 0) return;
  sgd_momentum_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(param), ptr<float>(grad),
                                                             ptr<float>(momentum), n, step);
  NNKIT_CUDA_CHECK_LAUNCH(sgd_momentum_kernel);
}

void CudaBackend::lion_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                              const MomentumStep& step) {
  OpScope op_scope(profiler_.get(), "lion_update");
  expect_update("lion_update", param, grad, m, "m");
  const int64_t n = param.numel();
  if (n == 0) return;
  lion_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(param), ptr<float>(grad),
                                                     ptr<float>(m), n, step);
  NNKIT_CUDA_CHECK_LAUNCH(lion_kernel);
}

}  // namespace nnkit::cuda
