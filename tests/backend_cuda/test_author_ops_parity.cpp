// Purpose: backend/cuda's author op set (ABI 3: mul, sign, clamp, add_scalar, activations forward
// and backward, sgd_momentum_update, lion_update) against backend/cpu on the same inputs: f32
// tensors under the f32 tolerances of cuda_parity.h, bf16 and f16 tensors under one rounding of
// the output on top (rounded_once), on odd shapes, large ones (many blocks) and unaligned views
// (the element-by-element kernels). Skips without a CUDA device. Owned by the backend/cuda tests.
#include <string>
#include <vector>

#include "cuda_parity.h"

namespace nnkit::test {
namespace {

using CudaAuthorOpsParity = CudaParityTest;

const std::vector<DType> kAllFloat = {DType::kF32, DType::kBF16, DType::kF16};
const std::vector<Shape> kShapes = {{7, 13}, {300001}};

std::string dtype_text(DType dt) {
  return dtype_name(dt);
}

TEST_F(CudaAuthorOpsParity, MulSignClampAddScalar) {
  for (DType dt : kAllFloat) {
    for (const Shape& shape : kShapes) {
      const std::string what = dtype_text(dt) + " " + to_string(shape);
      TensorPair a = same_rounded_random(shape, 200, dt, 3.0f);
      TensorPair b = same_rounded_random(shape, 201, dt, 3.0f);
      TensorPair out = poisoned(shape, dt);
      cpu().mul(out.cpu, a.cpu, b.cpu);
      cuda().mul(out.cuda, a.cuda, b.cuda);
      expect_is_rounded_cpu(out, "mul " + what);  // one IEEE product, one rounding
      cpu().sign(out.cpu, a.cpu);
      cuda().sign(out.cuda, a.cuda);
      expect_is_rounded_cpu(out, "sign " + what);
      cpu().clamp(out.cpu, a.cpu, -1.25f, 0.5f);
      cuda().clamp(out.cuda, a.cuda, -1.25f, 0.5f);
      expect_is_rounded_cpu(out, "clamp " + what);
      cpu().add_scalar(a.cpu, a.cpu, 0.375f);  // in place
      cuda().add_scalar(a.cuda, a.cuda, 0.375f);
      expect_is_rounded_cpu(a, "add_scalar in place " + what);
    }
    // Unaligned views take the element-by-element kernels.
    const int64_t n = 1001;
    TensorPair a = same_rounded_random({n + 1}, 202, dt), b = same_rounded_random({n + 1}, 203, dt);
    TensorPair out = poisoned({n + 1}, dt);
    TensorPair av{a.cpu.slice_rows(1, n + 1), a.cuda.slice_rows(1, n + 1)};
    TensorPair bv{b.cpu.slice_rows(1, n + 1), b.cuda.slice_rows(1, n + 1)};
    TensorPair ov{out.cpu.slice_rows(1, n + 1), out.cuda.slice_rows(1, n + 1)};
    cpu().mul(ov.cpu, av.cpu, bv.cpu);
    cuda().mul(ov.cuda, av.cuda, bv.cuda);
    expect_is_rounded_cpu(ov, "mul on unaligned views " + dtype_text(dt));
  }
}

TEST_F(CudaAuthorOpsParity, ActivationsForwardAndBackward) {
  // relu and relu^2 are exact in f32 on both sides (one product at most); gelu and silu go
  // through erf/exp, whose device versions are within a few ulp: kElementwiseExp.
  for (Activation act :
       {Activation::kRelu, Activation::kGelu, Activation::kSilu, Activation::kReluSquared}) {
    const bool exact = act == Activation::kRelu || act == Activation::kReluSquared;
    const Tolerance f32 = exact ? kExact : Tolerance{4e-6, 1e-7};
    for (DType dt : kAllFloat) {
      for (const Shape& shape : kShapes) {
        const std::string what = "activation " + std::to_string(int(act)) + " " + dtype_text(dt) +
                                 " " + to_string(shape);
        TensorPair x = same_rounded_random(shape, 210, dt, 4.0f);
        TensorPair dy = same_rounded_random(shape, 211, dt, 2.0f);
        TensorPair y = poisoned(shape, dt);
        cpu().activation_forward(act, x.cpu, y.cpu);
        cuda().activation_forward(act, x.cuda, y.cuda);
        expect_rounded_matches_cpu(y, rounded_once(f32, dt), "forward " + what);
        TensorPair dx = poisoned(shape, dt);
        cpu().activation_backward(act, dy.cpu, x.cpu, dx.cpu);
        cuda().activation_backward(act, dy.cuda, x.cuda, dx.cuda);
        // The backward multiplies dy by act'(x): one more product than the forward.
        expect_rounded_matches_cpu(
            dx, rounded_once(exact ? kMultiplyAdd : Tolerance{8e-6, 1e-7}, dt), "backward " + what);
      }
    }
  }
}

TEST_F(CudaAuthorOpsParity, SgdMomentumAndLionUpdates) {
  MomentumStep step;
  step.lr = 0.01f, step.beta1 = 0.9f, step.beta2 = 0.99f, step.weight_decay = 0.05f;
  step.grad_scale = 0.7f;
  for (const Shape& shape : kShapes) {
    for (bool lion : {false, true}) {
      const std::string what = std::string(lion ? "lion " : "sgd momentum ") + to_string(shape);
      TensorPair p = same_random(shape, 220), m = same_random(shape, 221, 0.1f);
      for (int s = 0; s < 3; ++s) {
        TensorPair g = same_random(shape, 230 + s);
        if (lion) {
          cpu().lion_update(p.cpu, g.cpu, m.cpu, step);
          cuda().lion_update(p.cuda, g.cuda, m.cuda, step);
        } else {
          cpu().sgd_momentum_update(p.cpu, g.cpu, m.cpu, step);
          cuda().sgd_momentum_update(p.cuda, g.cuda, m.cuda, step);
        }
      }
      // A few multiply-adds per step, fused on one side and maybe not on the other; Lion's sign
      // is the same unless c rounds across 0, which random data does not reach.
      expect_matches_cpu(p, {1e-5, 1e-6}, "param " + what);
      expect_matches_cpu(m, {1e-5, 1e-6}, "state " + what);
    }
  }
}

}  // namespace
}  // namespace nnkit::test
