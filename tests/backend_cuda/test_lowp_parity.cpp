// Purpose: backend/cuda's non-attention ops on bf16 and f16 tensors against backend/cpu's f32
// result on the same inputs rounded to that dtype: convert (rounding to nearest even, round
// trips), fills and elementwise ops, row_dot and sum_squares, gemm (c in f32 and in the 16-bit
// dtype, beta accumulation into f32, the few-row decode kernel and cuBLAS), RMSNorm, SwiGLU,
// softmax (x and y in different dtypes), rope, gather_rows of every dtype, scatter_add_rows of
// 16-bit rows into f32 and 16-bit destinations, cross-entropy with 16-bit logits and gradients;
// and the refusals of dtypes an op does not take. Owned by the backend/cuda tests.
// Tolerances: the CPU computes in f32 from the rounded inputs, the CUDA op in f32 from the same
// values and then rounds its output once, so each bound is the op's f32 tolerance (as in the fp32
// parity tests) plus one rounding of the output (rounded_once: bf16 4.3e-3, f16 5.4e-4
// relative). Outputs the contract keeps in f32 (rstd, row_dot, sum_squares, losses, f32
// destinations) get the f32 tolerance alone. Ops that are one IEEE operation in f32 must equal
// the CPU's f32 result rounded, exactly.
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "nnkit/error.h"

namespace nnkit::test {
namespace {

using CudaLowPrecisionParity = CudaParityTest;

const std::vector<DType> kLowDTypes = {DType::kBF16, DType::kF16};

// Matrix products: bf16/f16 products are exact in f32, and cuBLAS accumulates them in f32 on the
// tensor cores, which truncate once per 16-wide k step instead of rounding every addition: up to
// ~K/16 ulps of the result, ~6e-5 at K = 1000 and |c| ~ 10, against 1e-4 for f32 (kGemm).
constexpr Tolerance kLowpGemm{3e-4, 3e-4};
// Cross-entropy on 16-bit logits finds the row maximum and the sum of exponentials in one pass,
// rescaling partial sums when the maximum grows: a few more f32 roundings in the sum than the
// fp32 kernels' two passes (their bounds over 1000 columns: losses {4e-6, 2e-6}, dlogits
// {4e-6, 1e-7}), and rows of 32000 here, which the CPU sums in f32 a few thousand terms per SIMD
// lane (~5e-7 relative, rms).
constexpr Tolerance kLowpLosses{1e-5, 5e-6};
constexpr Tolerance kLowpDlogits{2e-5, 1e-6};

std::string name_of(DType dtype) {
  return dtype_name(dtype);
}

// Runs `call`, which must throw a ShapeError whose message contains each of `parts`.
void expect_refused(const std::function<void()>& call, const std::vector<std::string>& parts,
                    const std::string& what) {
  try {
    call();
  } catch (const ShapeError& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << what << ": the message \"" << message << "\" does not mention \"" << part << "\"";
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": expected a ShapeError, got: " << e.what();
    return;
  }
  ADD_FAILURE() << what << ": the call was not refused";
}

// ---- convert ------------------------------------------------------------------------------------

// Values at the rounding boundaries of both dtypes: exact ties (to the even neighbour), just past
// them, the largest finite values and what overflows, f16 subnormals and their ties, signed zero
// and infinities; then ordinary values over a wide range.
std::vector<float> rounding_probes() {
  std::vector<float> v = {
      1.0f + std::ldexp(1.0f, -8),                          // bf16 tie between 1 and 1 + 2^-7: 1
      1.0f + 3 * std::ldexp(1.0f, -8),                      // bf16 tie: up to 1 + 2^-6 (even)
      1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20),  // just past a bf16 tie: up
      -(1.0f + std::ldexp(1.0f, -8)),                       // ties are symmetric
      1.0f + std::ldexp(1.0f, -11),                         // f16 tie between 1 and 1 + 2^-10: 1
      1.0f + 3 * std::ldexp(1.0f, -11),                     // f16 tie: up to 1 + 2^-9
      65504.0f,                                             // f16's largest finite
      65519.0f,                                             // rounds down to 65504 in f16
      65520.0f,                                             // f16 overflow: infinity
      1e5f,
      std::numeric_limits<float>::max(),  // bf16 overflow too
      std::ldexp(1.0f, -24),              // f16's smallest subnormal
      std::ldexp(1.0f, -25),              // tie between 0 and 2^-24: 0
      3 * std::ldexp(1.0f, -25),          // tie: up to 2^-23
      1e-10f,                             // below f16's range: 0
      std::ldexp(1.0f, -14) * 1.5f,       // f16 normal
      std::ldexp(1.0f, -127),             // an f32 subnormal (bf16 keeps it)
      0.0f,
      -0.0f,
      std::numeric_limits<float>::infinity(),
      -std::numeric_limits<float>::infinity(),
      2.0f / 3.0f};
  for (float x : random_values(997, 900, 1.0f)) v.push_back(x);
  for (float x : random_values(1000, 901, 1.0f)) v.push_back(x * 3e4f);
  for (float x : random_values(1000, 902, 1.0f)) v.push_back(x * 1e-6f);
  return v;
}

TEST_F(CudaLowPrecisionParity, ConvertRoundsToNearestEvenLikeTheHost) {
  const std::vector<float> values = rounding_probes();
  const int64_t n = static_cast<int64_t>(values.size());
  Tensor wide = tensor_from(cuda(), values, {n});
  for (DType dt : kLowDTypes) {
    const std::vector<uint32_t> want = float_bits(round_to(dt, values));
    // Aligned (16-byte packs) and one element in (element by element): the same bits.
    Tensor narrow = cuda().empty({n}, dt);
    cuda().convert(narrow, wide);
    EXPECT_EQ(float_bits(cuda_floats(narrow)), want) << "f32 -> " << name_of(dt);
    Tensor spare = cuda().empty({n + 1}, dt);
    Tensor offset = spare.slice_rows(1, n + 1);
    cuda().convert(offset, wide);
    EXPECT_EQ(float_bits(cuda_floats(offset)), want) << "f32 -> " << name_of(dt) << " (unaligned)";
    // NaN stays NaN.
    Tensor nan = tensor_from(cuda(), {std::numeric_limits<float>::quiet_NaN()}, {1});
    Tensor nan_narrow = cuda().empty({1}, dt);
    cuda().convert(nan_narrow, nan);
    EXPECT_TRUE(std::isnan(cuda_floats(nan_narrow)[0])) << "NaN -> " << name_of(dt);
  }
}

TEST_F(CudaLowPrecisionParity, ConvertRoundTripsAreExactForRepresentableValues) {
  // Multiples of 2^-6 below 4 in magnitude have at most 8 significant bits: exact in both.
  std::vector<float> both;
  for (int k = -255; k <= 255; ++k) both.push_back(static_cast<float>(k) / 64.0f);
  const int64_t n = static_cast<int64_t>(both.size());
  for (DType dt : kLowDTypes) {
    const std::vector<float> representable = round_to(dt, random_values(4099, 910, 50.0f));
    const int64_t m = static_cast<int64_t>(representable.size());
    Tensor wide = tensor_from(cuda(), representable, {m});
    Tensor narrow = cuda().empty({m}, dt), back = cuda().empty({m});
    cuda().convert(narrow, wide);
    cuda().convert(back, narrow);
    EXPECT_EQ(float_bits(to_vector(cuda(), back)), float_bits(representable))
        << "f32 -> " << name_of(dt) << " -> f32";
    Tensor copy = cuda().empty({m}, dt);
    cuda().convert(copy, narrow);  // same dtype: a copy
    EXPECT_EQ(float_bits(cuda_floats(copy)), float_bits(representable)) << name_of(dt) << " copy";
  }
  // bf16 <-> f16 on values both hold, then values only one of them holds (one rounding).
  Tensor wide = tensor_from(cuda(), both, {n});
  Tensor bf = cuda().empty({n}, DType::kBF16), h = cuda().empty({n}, DType::kF16);
  Tensor bf_again = cuda().empty({n}, DType::kBF16);
  cuda().convert(bf, wide);
  cuda().convert(h, bf);
  cuda().convert(bf_again, h);
  EXPECT_EQ(float_bits(cuda_floats(h)), float_bits(both)) << "bf16 -> f16";
  EXPECT_EQ(float_bits(cuda_floats(bf_again)), float_bits(both)) << "bf16 -> f16 -> bf16";
  const std::vector<float> f16_only = round_to(DType::kF16, random_values(1001, 911, 2.0f));
  const std::vector<float> bf16_only = round_to(DType::kBF16, random_values(1001, 912, 1e5f));
  Tensor h_src = cuda().empty({1001}, DType::kF16), bf_src = cuda().empty({1001}, DType::kBF16);
  cuda().convert(h_src, tensor_from(cuda(), f16_only, {1001}));
  cuda().convert(bf_src, tensor_from(cuda(), bf16_only, {1001}));
  Tensor h_to_bf = cuda().empty({1001}, DType::kBF16), bf_to_h = cuda().empty({1001}, DType::kF16);
  cuda().convert(h_to_bf, h_src);
  cuda().convert(bf_to_h, bf_src);
  EXPECT_EQ(float_bits(cuda_floats(h_to_bf)), float_bits(round_to(DType::kBF16, f16_only)))
      << "f16 -> bf16 rounds once";
  EXPECT_EQ(float_bits(cuda_floats(bf_to_h)), float_bits(round_to(DType::kF16, bf16_only)))
      << "bf16 -> f16 rounds once (overflowing to infinity past 65504)";
}

// ---- fills and elementwise ----------------------------------------------------------------------

TEST_F(CudaLowPrecisionParity, FillsStoreTheRoundedF32Value) {
  for (DType dt : kLowDTypes) {
    const std::string what = name_of(dt);
    Tensor t = cuda().empty({7, 13}, dt);
    cuda().fill(t, 0.1f);
    EXPECT_EQ(float_bits(cuda_floats(t)), float_bits(std::vector<float>(91, round_to(dt, 0.1f))))
        << "fill " << what;
    // fill_normal: the generator's f32 value rounded (the f32 values may differ from the CPU's in
    // the last bit, see the fp32 test, which one rounding covers).
    TensorPair normal = poisoned({100003}, dt);
    cpu().fill_normal(normal.cpu, 0.5f, 2.0f, 1234);
    cuda().fill_normal(normal.cuda, 0.5f, 2.0f, 1234);
    expect_rounded_matches_cpu(normal, rounded_once({1.2e-7, 0.0}, dt), "fill_normal " + what);
  }
}

TEST_F(CudaLowPrecisionParity, AddAxpyScaleAndScaleRows) {
  for (DType dt : kLowDTypes) {
    for (const Shape& shape : {Shape{7, 13}, Shape{300001}, Shape{33, 64}}) {
      const std::string what = name_of(dt) + " " + to_string(shape);
      TensorPair a = same_rounded_random(shape, 100, dt, 3.0f);
      TensorPair b = same_rounded_random(shape, 101, dt, 3.0f);
      TensorPair out = poisoned(shape, dt);
      cpu().add(out.cpu, a.cpu, b.cpu);
      cuda().add(out.cuda, a.cuda, b.cuda);
      expect_is_rounded_cpu(out, "add " + what);
      cpu().add(a.cpu, a.cpu, b.cpu);  // out aliasing a
      cuda().add(a.cuda, a.cuda, b.cuda);
      expect_is_rounded_cpu(a, "add in place " + what);

      TensorPair y = same_rounded_random(shape, 102, dt);
      TensorPair x = same_rounded_random(shape, 103, dt);
      cpu().axpy(y.cpu, -0.75f, x.cpu);
      cuda().axpy(y.cuda, -0.75f, x.cuda);
      expect_rounded_matches_cpu(y, rounded_once(kMultiplyAdd, dt), "axpy " + what);

      TensorPair t = same_rounded_random(shape, 104, dt);
      cpu().scale(t.cpu, 0.3f);
      cuda().scale(t.cuda, 0.3f);
      expect_is_rounded_cpu(t, "scale " + what);

      const int64_t rows = shape.size() == 2 ? shape[0] : 1;
      TensorPair s = same_rounded_random(shape, 105, dt);
      TensorPair w = same_random({rows}, 106, 2.0f);  // f32 row scales
      cpu().scale_rows(s.cpu, w.cpu);
      cuda().scale_rows(s.cuda, w.cuda);
      expect_is_rounded_cpu(s, "scale_rows " + what);
    }
    // Views that start 2 bytes into their storage take the element-by-element kernels.
    const int64_t n = 1001;
    TensorPair a = same_rounded_random({n + 1}, 107, dt), b = same_rounded_random({n + 1}, 108, dt);
    TensorPair out = poisoned({n + 1}, dt);
    TensorPair av{a.cpu.slice_rows(1, n + 1), a.cuda.slice_rows(1, n + 1)};
    TensorPair bv{b.cpu.slice_rows(1, n + 1), b.cuda.slice_rows(1, n + 1)};
    TensorPair ov{out.cpu.slice_rows(1, n + 1), out.cuda.slice_rows(1, n + 1)};
    cpu().add(ov.cpu, av.cpu, bv.cpu);
    cuda().add(ov.cuda, av.cuda, bv.cuda);
    expect_is_rounded_cpu(ov, "add on unaligned views " + name_of(dt));
  }
}

TEST_F(CudaLowPrecisionParity, RowDotAndSumSquaresAccumulateInF32Outputs) {
  for (DType dt : kLowDTypes) {
    for (const Shape& shape : {Shape{7, 13}, Shape{300, 256}, Shape{5, 1000}}) {
      const std::string what = name_of(dt) + " " + to_string(shape);
      TensorPair a = same_rounded_random(shape, 110, dt);
      TensorPair b = same_rounded_random(shape, 111, dt);
      TensorPair out = poisoned({shape[0]});
      cpu().row_dot(a.cpu, b.cpu, out.cpu);
      cuda().row_dot(a.cuda, b.cuda, out.cuda);
      expect_matches_cpu(out, kReduction, "row_dot " + what);
      TensorPair total = same_values({2.5f}, {1});  // accumulates onto 2.5
      cpu().sum_squares(a.cpu, total.cpu);
      cuda().sum_squares(a.cuda, total.cuda);
      expect_matches_cpu(total, kPositiveSum, "sum_squares " + what);
    }
  }
}

// ---- gemm ---------------------------------------------------------------------------------------

struct GemmSize {
  int64_t M, K, N;
  std::string name() const {
    return std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);
  }
};

// With b transposed, M <= 16 takes the few-row kernel: K 1000 and 64 in 16-byte packs (chunks of
// 16, 4, 2 and 1 rows for M 23), K 13 and 129 element by element; the rest goes to cuBLAS.
const std::vector<GemmSize> kGemmSizes = {{1, 1000, 300}, {7, 13, 5},    {16, 129, 70},
                                          {23, 64, 33},   {131, 70, 37}, {128, 256, 192}};

TEST_F(CudaLowPrecisionParity, GemmWithF32AndLowPrecisionC) {
  for (DType dt : kLowDTypes) {
    for (const GemmSize& s : kGemmSizes) {
      for (int ta = 0; ta < 2; ++ta) {
        for (int tb = 0; tb < 2; ++tb) {
          const std::string what = "gemm " + name_of(dt) + " " + s.name() +
                                   " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb);
          TensorPair a = same_rounded_random(ta ? Shape{s.K, s.M} : Shape{s.M, s.K}, 10 + ta, dt);
          TensorPair b = same_rounded_random(tb ? Shape{s.N, s.K} : Shape{s.K, s.N}, 20 + tb, dt);
          // c in f32, accumulated onto (beta = 0.25).
          TensorPair c = same_random({s.M, s.N}, 30);
          cpu().gemm(a.cpu, ta, b.cpu, tb, c.cpu, -1.5f, 0.25f);
          cuda().gemm(a.cuda, ta, b.cuda, tb, c.cuda, -1.5f, 0.25f);
          expect_matches_cpu(c, kLowpGemm, what + " c f32 beta=0.25");
          // c in the low dtype, accumulated onto and overwritten over NaN (beta = 0). With
          // beta != 0 cuBLAS's 16-bit epilogue may round alpha*AB to the output dtype before it
          // adds beta*c (measured on the H200: up to ~8 units of the result where the two
          // nearly cancel), so the bound adds one rounding of each term to the sum's.
          TensorPair c_low = same_rounded_random({s.M, s.N}, 31, dt);
          const std::vector<float> c_before = cpu_values(c_low);
          TensorPair ab = same_random({s.M, s.N}, 32);
          cpu().gemm(a.cpu, ta, b.cpu, tb, ab.cpu, 0.5f, 0.0f);
          const std::vector<float> ab_values = to_vector(cpu(), ab.cpu);
          cpu().gemm(a.cpu, ta, b.cpu, tb, c_low.cpu, 0.5f, 1.0f);
          cuda().gemm(a.cuda, ta, b.cuda, tb, c_low.cuda, 0.5f, 1.0f);
          {
            const std::vector<float> want = cpu_values(c_low);
            const std::vector<float> got = cuda_floats(c_low.cuda);
            const Tolerance once = rounded_once(kLowpGemm, dt);
            const double u = unit_roundoff(dt);
            int64_t outside = 0;
            for (size_t i = 0; i < want.size(); ++i) {
              const double bound = once.atol + once.rtol * std::abs(want[i]) +
                                   1.1 * u * (std::abs(ab_values[i]) + std::abs(c_before[i]));
              if (!(std::abs(double(got[i]) - want[i]) <= bound)) ++outside;
            }
            EXPECT_EQ(outside, 0) << what << " c " << name_of(dt) << " beta=1";
          }
          TensorPair c_nan = poisoned({s.M, s.N}, dt);
          cpu().gemm(a.cpu, ta, b.cpu, tb, c_nan.cpu, 0.75f, 0.0f);
          cuda().gemm(a.cuda, ta, b.cuda, tb, c_nan.cuda, 0.75f, 0.0f);
          expect_rounded_matches_cpu(c_nan, rounded_once(kLowpGemm, dt),
                                     what + " c " + name_of(dt) + " beta=0 over NaN");
        }
      }
    }
  }
}

// Parameter gradients: bf16/f16 activations x bf16/f16 gradients accumulated (beta = 1) into an
// f32 gradient over several micro-batches, as a weight gradient dW += dy^T x is.
TEST_F(CudaLowPrecisionParity, GemmAccumulatesLowPrecisionProductsIntoF32) {
  for (DType dt : kLowDTypes) {
    const int64_t tokens = 96, in = 72, out = 40;
    TensorPair grad = same_random({out, in}, 40, 0.1f);
    for (uint64_t batch = 0; batch < 3; ++batch) {
      TensorPair dy = same_rounded_random({tokens, out}, 41 + batch, dt);
      TensorPair x = same_rounded_random({tokens, in}, 51 + batch, dt);
      cpu().gemm(dy.cpu, true, x.cpu, false, grad.cpu, 1.0f, 1.0f);
      cuda().gemm(dy.cuda, true, x.cuda, false, grad.cuda, 1.0f, 1.0f);
    }
    expect_matches_cpu(grad, kLowpGemm, "dW += dy^T x, three " + name_of(dt) + " micro-batches");
  }
}

TEST_F(CudaLowPrecisionParity, GemmWithEmptyInnerDimensionScalesLowPrecisionC) {
  for (DType dt : kLowDTypes) {
    TensorPair a{cpu().empty({3, 0}), cuda().empty({3, 0}, dt)};
    TensorPair b{cpu().empty({0, 2}), cuda().empty({0, 2}, dt)};
    TensorPair c = same_rounded_random({3, 2}, 42, dt);
    cpu().gemm(a.cpu, false, b.cpu, false, c.cpu, 1.0f, 0.5f);
    cuda().gemm(a.cuda, false, b.cuda, false, c.cuda, 1.0f, 0.5f);
    expect_is_rounded_cpu(c, "gemm K=0 beta=0.5 " + name_of(dt));
  }
}

// ---- normalisation and activations --------------------------------------------------------------

TEST_F(CudaLowPrecisionParity, RmsnormWithF32AndLowPrecisionWeight) {
  const float eps = 1e-5f;
  for (DType dt : kLowDTypes) {
    for (DType weight_dt : {DType::kF32, dt}) {
      for (const Shape& shape : {Shape{7, 13}, Shape{130, 256}, Shape{4, 4096}}) {
        const std::string what =
            name_of(dt) + " weight " + name_of(weight_dt) + " " + to_string(shape);
        const int64_t C = shape[1];
        TensorPair x = same_rounded_random(shape, 50, dt, 2.0f);
        TensorPair w = weight_dt == DType::kF32 ? same_random({C}, 51)
                                                : same_rounded_random({C}, 51, weight_dt);
        TensorPair y = poisoned(shape, dt), rstd = poisoned({shape[0]});
        cpu().rmsnorm_forward(x.cpu, w.cpu, eps, y.cpu, rstd.cpu);
        cuda().rmsnorm_forward(x.cuda, w.cuda, eps, y.cuda, rstd.cuda);
        expect_matches_cpu(rstd, {1e-5, 1e-6}, "rmsnorm rstd " + what);
        expect_rounded_matches_cpu(y, rounded_once({1e-5, 1e-6}, dt), "rmsnorm y " + what);

        TensorPair dy = same_rounded_random(shape, 52, dt);
        TensorPair dw = same_random({C}, 53);  // dweight (f32) accumulates onto this
        TensorPair dx = poisoned(shape, dt);
        cpu().rmsnorm_backward(dy.cpu, x.cpu, w.cpu, rstd.cpu, dx.cpu, dw.cpu);
        cuda().rmsnorm_backward(dy.cuda, x.cuda, w.cuda, rstd.cuda, dx.cuda, dw.cuda);
        expect_rounded_matches_cpu(dx, rounded_once({1e-5, 1e-5}, dt), "rmsnorm dx " + what);
        expect_matches_cpu(dw, kReduction, "rmsnorm dweight (accumulated) " + what);
        cpu().rmsnorm_backward(dy.cpu, x.cpu, w.cpu, rstd.cpu, dy.cpu, dw.cpu);  // dx aliases dy
        cuda().rmsnorm_backward(dy.cuda, x.cuda, w.cuda, rstd.cuda, dy.cuda, dw.cuda);
        expect_rounded_matches_cpu(dy, rounded_once({1e-5, 1e-5}, dt),
                                   "rmsnorm dx aliasing dy " + what);
      }
    }
  }
}

TEST_F(CudaLowPrecisionParity, SwigluForwardAndBackward) {
  for (DType dt : kLowDTypes) {
    for (const Shape& shape : {Shape{7, 13}, Shape{257, 304}}) {
      const std::string what = name_of(dt) + " " + to_string(shape);
      TensorPair gate = same_rounded_random(shape, 60, dt, 6.0f);
      TensorPair up = same_rounded_random(shape, 61, dt);
      TensorPair dout = same_rounded_random(shape, 62, dt);
      TensorPair out = poisoned(shape, dt), dgate = poisoned(shape, dt), dup = poisoned(shape, dt);
      cpu().swiglu_forward(gate.cpu, up.cpu, out.cpu);
      cuda().swiglu_forward(gate.cuda, up.cuda, out.cuda);
      expect_rounded_matches_cpu(out, rounded_once(kElementwiseExp, dt), "swiglu out " + what);
      cpu().swiglu_backward(dout.cpu, gate.cpu, up.cpu, dgate.cpu, dup.cpu);
      cuda().swiglu_backward(dout.cuda, gate.cuda, up.cuda, dgate.cuda, dup.cuda);
      expect_rounded_matches_cpu(dup, rounded_once(kElementwiseExp, dt), "swiglu dup " + what);
      expect_rounded_matches_cpu(dgate, rounded_once({2e-6, 1e-6}, dt), "swiglu dgate " + what);
    }
  }
}

TEST_F(CudaLowPrecisionParity, SoftmaxWithIndependentInputAndOutputDtypes) {
  const Tolerance backward{1e-5, 2e-7};
  for (DType dt : kLowDTypes) {
    for (const Shape& shape : {Shape{7, 13}, Shape{64, 1000}}) {
      const std::string size = name_of(dt) + " " + to_string(shape);
      // Low-precision x into low-precision y, into f32 y; f32 x into low-precision y.
      TensorPair x = same_rounded_random(shape, 70, dt, 5.0f);
      TensorPair y = poisoned(shape, dt), y32 = poisoned(shape);
      cpu().softmax_rows(x.cpu, y.cpu);
      cuda().softmax_rows(x.cuda, y.cuda);
      expect_rounded_matches_cpu(y, rounded_once(kRowExp, dt), "softmax x, y " + size);
      cpu().softmax_rows(x.cpu, y32.cpu);
      cuda().softmax_rows(x.cuda, y32.cuda);
      expect_matches_cpu(y32, kRowExp, "softmax x " + size + ", y f32");
      TensorPair x32 = same_random(shape, 71, 5.0f);
      TensorPair y_from32 = poisoned(shape, dt);
      cpu().softmax_rows(x32.cpu, y_from32.cpu);
      cuda().softmax_rows(x32.cuda, y_from32.cuda);
      expect_rounded_matches_cpu(y_from32, rounded_once(kRowExp, dt), "softmax x f32, y " + size);
      // Backward from the CUDA y (the CPU is given the same rounded probabilities).
      TensorPair probs{tensor_from(cpu(), cuda_floats(y.cuda), shape), y.cuda};
      TensorPair dy = same_rounded_random(shape, 72, dt);
      TensorPair dx = poisoned(shape, dt);
      cpu().softmax_backward(probs.cpu, dy.cpu, dx.cpu);
      cuda().softmax_backward(probs.cuda, dy.cuda, dx.cuda);
      expect_rounded_matches_cpu(dx, rounded_once(backward, dt), "softmax backward " + size);
      cpu().softmax_rows(x.cpu, x.cpu);  // y aliases x
      cuda().softmax_rows(x.cuda, x.cuda);
      expect_rounded_matches_cpu(x, rounded_once(kRowExp, dt), "softmax in place " + size);
    }
  }
}

TEST_F(CudaLowPrecisionParity, RopeForwardAndInverse) {
  const std::vector<int32_t> positions = {0,    1,    2,     17,    255,   256,   4000,
                                          8191, 8192, 32768, 65535, 65536, 69999, 70000};
  const int64_t N = static_cast<int64_t>(positions.size());
  TensorPair pos = same_ints(positions, {N});
  for (DType dt : kLowDTypes) {
    for (bool inverse : {false, true}) {
      const std::string what =
          std::string("rope ") + (inverse ? "inverse " : "") + name_of(dt) + " H=3 D=64";
      TensorPair x = same_rounded_random({N, 3 * 64}, inverse ? 81 : 80, dt);
      cpu().rope(x.cpu, pos.cpu, 3, 64, 10000.0f, inverse);
      cuda().rope(x.cuda, pos.cuda, 3, 64, 10000.0f, inverse);
      expect_rounded_matches_cpu(x, rounded_once(kRope, dt), what);
    }
  }
}

// ---- gather / scatter ---------------------------------------------------------------------------

TEST_F(CudaLowPrecisionParity, GatherRowsCopiesEveryDtypeBitForBit) {
  std::vector<int32_t> large(4096);
  for (size_t n = 0; n < large.size(); ++n) large[n] = n % 17 == 5 ? -1 : int32_t((n * 131) % 1000);
  struct Case {
    int64_t rows, cols;
    std::vector<int32_t> index;
  };
  // 13 columns: 26-byte rows of halves (2-byte copies); 256 and 768: 16-byte copies.
  for (const Case& c :
       {Case{5, 13, {4, 0, -1, 4, 2, 1, 3}}, Case{1000, 256, large}, Case{1000, 768, large}}) {
    const int64_t N = static_cast<int64_t>(c.index.size());
    TensorPair index = same_ints(c.index, {N});
    for (DType dt : kLowDTypes) {
      const std::string what = "gather_rows " + name_of(dt) + " " + std::to_string(N) + " of (" +
                               std::to_string(c.rows) + ", " + std::to_string(c.cols) + ")";
      TensorPair src = same_rounded_random({c.rows, c.cols}, 200, dt);
      TensorPair dst = poisoned({N, c.cols}, dt);
      cpu().gather_rows(src.cpu, index.cpu, dst.cpu);
      cuda().gather_rows(src.cuda, index.cuda, dst.cuda);
      expect_rounded_matches_cpu(dst, kExact, what);
    }
    // i32 rows (token ids, expert indices): compared with the rows picked on the host.
    const int64_t cols = 3;
    std::vector<int32_t> table(static_cast<size_t>(c.rows * cols));
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i * 7919 % 100003);
    Tensor src = tensor_from_i32(cuda(), table, {c.rows, cols});
    Tensor dst = cuda().empty({N, cols}, DType::kI32);
    cuda().fill(dst, -5.0f);
    cuda().gather_rows(src, index.cuda, dst);
    std::vector<int32_t> want(static_cast<size_t>(N * cols), 0);
    for (int64_t n = 0; n < N; ++n) {
      const int32_t from = c.index[size_t(n)];
      for (int64_t j = 0; j < cols && from >= 0; ++j) {
        want[size_t(n * cols + j)] = table[size_t(from * cols + j)];
      }
    }
    EXPECT_EQ(to_vector_i32(cuda(), dst), want) << "gather_rows i32 " << N << " rows";
  }
}

TEST_F(CudaLowPrecisionParity, ScatterAddRowsLowPrecisionSourcesAndDestinations) {
  struct Pairing {
    DType src, dst;
  };
  for (DType dt : kLowDTypes) {
    for (const Pairing p : {Pairing{dt, DType::kF32}, Pairing{dt, dt}, Pairing{DType::kF32, dt}}) {
      for (bool weighted : {false, true}) {
        for (int64_t cols : {13, 256, 300}) {
          const int64_t N = 200, R = 5;
          const std::string what = "scatter_add_rows src " + name_of(p.src) + " dst " +
                                   name_of(p.dst) + (weighted ? " weighted" : " unweighted") +
                                   " cols=" + std::to_string(cols);
          std::vector<int32_t> idx(static_cast<size_t>(N));
          for (int64_t n = 0; n < N; ++n) idx[size_t(n)] = n % 11 == 3 ? -1 : int32_t((n * 7) % R);
          TensorPair src = p.src == DType::kF32 ? same_random({N, cols}, 210)
                                                : same_rounded_random({N, cols}, 210, p.src);
          TensorPair dst = p.dst == DType::kF32 ? same_random({R, cols}, 211)
                                                : same_rounded_random({R, cols}, 211, p.dst);
          TensorPair index = same_ints(idx, {N});
          TensorPair weight;
          if (weighted) weight = same_random({N}, 212);
          cpu().scatter_add_rows(src.cpu, index.cpu, weight.cpu, dst.cpu);
          cuda().scatter_add_rows(src.cuda, index.cuda, weight.cuda, dst.cuda);
          // Each destination element is summed in f32 (40 rows) and rounded once.
          expect_rounded_matches_cpu(dst, rounded_once(kReduction, p.dst), what);
        }
      }
    }
  }
}

// bf16 expert outputs combined into an f32 residual: the same bits on every run.
TEST_F(CudaLowPrecisionParity, ScatterAddRowsIntoF32RepeatsBitForBit) {
  const int64_t N = 4096, C = 256, R = 1024;
  std::vector<int32_t> idx(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) idx[size_t(n)] = int32_t((n * 37) % R);
  TensorPair src = same_rounded_random({N, C}, 220, DType::kBF16);
  TensorPair index = same_ints(idx, {N});
  TensorPair weight = same_random({N}, 221);
  std::vector<uint32_t> first;
  for (int run = 0; run < 2; ++run) {
    Tensor dst = cuda().zeros({R, C});
    cuda().scatter_add_rows(src.cuda, index.cuda, weight.cuda, dst);
    const std::vector<uint32_t> bits = float_bits(to_vector(cuda(), dst));
    if (run == 0) {
      first = bits;
    } else {
      EXPECT_EQ(bits, first) << "second run";
    }
  }
}

// ---- cross-entropy ------------------------------------------------------------------------------

TEST_F(CudaLowPrecisionParity, CrossEntropyWithLowPrecisionLogitsAndGradients) {
  struct Case {
    int64_t rows, vocab;
    float range;
    std::vector<int32_t> targets;
  };
  std::vector<int32_t> many(64);
  for (size_t n = 0; n < many.size(); ++n) many[n] = n % 9 == 4 ? -1 : int32_t((n * 37) % 1000);
  many[10] = -100;
  // 13: element by element; 1000: 16-byte packs, 128 threads; 32000: packs, 1024 threads.
  for (const Case& c : {Case{7, 13, 8.0f, {3, -1, 0, 12, -100, 5, 5}}, Case{64, 1000, 6.0f, many},
                        Case{4, 32000, 6.0f, {31999, 0, -1, 17000}}}) {
    TensorPair targets = same_ints(c.targets, {c.rows});
    for (DType dt : kLowDTypes) {
      const std::string what = "cross_entropy " + name_of(dt) + " " + std::to_string(c.rows) + "x" +
                               std::to_string(c.vocab);
      TensorPair logits = same_rounded_random({c.rows, c.vocab}, 230, dt, c.range);
      TensorPair losses = poisoned({c.rows});
      cpu().cross_entropy_forward(logits.cpu, targets.cpu, losses.cpu);
      cuda().cross_entropy_forward(logits.cuda, targets.cuda, losses.cuda);
      expect_matches_cpu(losses, kLowpLosses, what + " losses (f32)");
      TensorPair d32 = poisoned({c.rows, c.vocab}), dlow = poisoned({c.rows, c.vocab}, dt);
      cpu().cross_entropy_backward(logits.cpu, targets.cpu, 0.25f, d32.cpu);
      cuda().cross_entropy_backward(logits.cuda, targets.cuda, 0.25f, d32.cuda);
      expect_matches_cpu(d32, kLowpDlogits, what + " dlogits f32");
      cpu().cross_entropy_backward(logits.cpu, targets.cpu, 0.25f, dlow.cpu);
      cuda().cross_entropy_backward(logits.cuda, targets.cuda, 0.25f, dlow.cuda);
      expect_rounded_matches_cpu(dlow, rounded_once(kLowpDlogits, dt),
                                 what + " dlogits " + name_of(dt));
      // f32 logits into low-precision dlogits (the fp32 kernel, rounding its store).
      TensorPair logits32 = same_random({c.rows, c.vocab}, 231, c.range);
      TensorPair dlow_from32 = poisoned({c.rows, c.vocab}, dt);
      cpu().cross_entropy_backward(logits32.cpu, targets.cpu, 0.25f, dlow_from32.cpu);
      cuda().cross_entropy_backward(logits32.cuda, targets.cuda, 0.25f, dlow_from32.cuda);
      expect_rounded_matches_cpu(dlow_from32, rounded_once(kLowpDlogits, dt),
                                 what + " f32 logits, dlogits " + name_of(dt));
      // In place: dlogits over the logits.
      cpu().cross_entropy_backward(logits.cpu, targets.cpu, 0.25f, logits.cpu);
      cuda().cross_entropy_backward(logits.cuda, targets.cuda, 0.25f, logits.cuda);
      expect_rounded_matches_cpu(logits, rounded_once(kLowpDlogits, dt), what + " in place");
    }
  }
}

// ---- refusals and the precision option ----------------------------------------------------------

TEST_F(CudaLowPrecisionParity, DtypesAnOpDoesNotTakeAreRefusedByName) {
  const DType bf = DType::kBF16;
  Tensor x = cuda().empty({4, 8}, bf), w = cuda().empty({8}), rstd_bf = cuda().empty({4}, bf);
  expect_refused(
      [&] {
        cuda().rmsnorm_forward(x, w, 1e-5f, cuda().empty({4, 8}, bf), rstd_bf);
      },
      {"rmsnorm_forward", "rstd", "bf16", "expected dtype f32"}, "rmsnorm rstd bf16");
  expect_refused(
      [&] {
        cuda().rmsnorm_forward(x, cuda().empty({8}, DType::kF16), 1e-5f, cuda().empty({4, 8}, bf),
                               cuda().empty({4}));
      },
      {"rmsnorm_forward", "weight", "expected dtype f32 or bf16"}, "rmsnorm f16 weight, bf16 x");
  expect_refused(
      [&] {
        cuda().gemm(cuda().empty({4, 8}), false, x, true, cuda().empty({4, 4}));
      },
      {"gemm", "b is bf16", "expected dtype f32 (the dtype of a)"}, "gemm a f32, b bf16");
  expect_refused(
      [&] {
        cuda().gemm(x, false, x, true, cuda().empty({4, 4}, DType::kF16));
      },
      {"gemm", "c is f16", "expected dtype f32 or bf16"}, "gemm bf16 operands, f16 c");
  expect_refused(
      [&] {
        cuda().gemm(cuda().empty({4, 8}, DType::kI32), false, x, true, cuda().empty({4, 4}));
      },
      {"gemm", "a is i32", "expected dtype f32, bf16 or f16"}, "gemm i32 a");
  expect_refused(
      [&] {
        cuda().swiglu_forward(x, cuda().empty({4, 8}, DType::kF16), cuda().empty({4, 8}, bf));
      },
      {"swiglu_forward", "up", "expected dtype bf16 (the dtype of gate)"}, "swiglu mixed dtypes");
  expect_refused(
      [&] {
        cuda().topk_rows(x, 2, cuda().empty({4, 2}), cuda().empty({4, 2}, DType::kI32));
      },
      {"topk_rows", "x is bf16", "expected dtype f32"}, "topk bf16 x");
  expect_refused(
      [&] {
        cuda().gather_rows(x, cuda().zeros({2}, DType::kI32), cuda().empty({2, 8}));
      },
      {"gather_rows", "dst", "expected dtype bf16 (the dtype of src)"}, "gather dst f32, src bf16");
  expect_refused(
      [&] {
        cuda().scatter_add_rows(x, cuda().zeros({4}, DType::kI32), cuda().empty({4}, bf),
                                cuda().empty({2, 8}));
      },
      {"scatter_add_rows", "weight", "expected dtype f32"}, "scatter bf16 weight");
  expect_refused(
      [&] {
        cuda().cross_entropy_forward(x, cuda().zeros({4}, DType::kI32), cuda().empty({4}, bf));
      },
      {"cross_entropy_forward", "losses", "expected dtype f32"}, "cross_entropy bf16 losses");
  expect_refused(
      [&] {
        cuda().convert(cuda().empty({4, 8}, DType::kI32), x);
      },
      {"convert", "dst", "expected dtype f32, bf16 or f16"}, "convert to i32");
  expect_refused(
      [&] {
        cuda().convert(cuda().empty({5, 8}), x);
      },
      {"convert", "same number of elements"}, "convert numel mismatch");
  expect_refused(
      [&] {
        Tensor ints = cuda().empty({4, 8}, DType::kI32);
        cuda().add(ints, ints, ints);
      },
      {"add", "out", "expected dtype f32, bf16 or f16"}, "add i32");
  // In place with two dtypes over one buffer cannot be right.
  Tensor wide = cuda().empty({4, 8});
  Tensor narrow_alias(wide.storage(), {4, 8}, bf);
  expect_refused([&] { cuda().softmax_rows(wide, narrow_alias); }, {"softmax_rows", "in place"},
                 "softmax in place across dtypes");
}

TEST_F(CudaLowPrecisionParity, PrecisionOptionSetsTheComputeDtype) {
  EXPECT_EQ(cuda().compute_dtype(), DType::kF32) << "the fixture's backend is created at fp32";
  EXPECT_EQ(make_cuda_backend("bf16")->compute_dtype(), DType::kBF16);
  EXPECT_EQ(make_cuda_backend("fp16")->compute_dtype(), DType::kF16);
  EXPECT_EQ(create<Backend>("backend", "cuda")->compute_dtype(), DType::kBF16) << "the default";
  // Ops follow their tensors, not the option: a bf16 backend still computes f32 tensors in f32.
  std::shared_ptr<Backend> bf16_backend = make_cuda_backend("bf16");
  TensorPair a = same_random({7, 13}, 240), b = same_random({7, 13}, 241);
  Tensor a_again = tensor_from(*bf16_backend, cuda_values(a), {7, 13});
  Tensor b_again = tensor_from(*bf16_backend, cuda_values(b), {7, 13});
  Tensor sum = bf16_backend->empty({7, 13});
  bf16_backend->add(sum, a_again, b_again);
  cpu().add(a.cpu, a.cpu, b.cpu);
  expect_close_to_cpu(to_vector(*bf16_backend, sum), cpu_values(a), kExact,
                      "f32 add on a bf16-precision backend");
}

}  // namespace
}  // namespace nnkit::test
