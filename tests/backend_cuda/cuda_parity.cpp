// Purpose: see cuda_parity.h. Owned by the backend/cuda tests.
#include "cuda_parity.h"

#include <bit>
#include <cmath>
#include <limits>
#include <sstream>

#include "nnkit/error.h"
#include "nnkit/io/half.h"

namespace nnkit::test {

namespace {

// Why the registry refused the CUDA plugin's library, if it did ("" otherwise): a plugin that
// fails to load (missing libcudart, undefined symbol) is only recorded there, and the PluginError
// from create() then just says the plugin is unknown.
std::string cuda_plugin_rejection() {
  std::string reasons;
  for (const RejectedLibrary& rejected : registry().rejected()) {
    if (rejected.path.find("nnkit_backend_cuda") == std::string::npos) continue;
    reasons += "; " + rejected.path + " was not loaded: " + rejected.reason;
  }
  return reasons;
}

}  // namespace

std::shared_ptr<Backend> CudaParityTest::make_cuda_backend(const std::string& precision) {
  return create<Backend>("backend", "cuda",
                         {{"device", "0"}, {"tf32", "false"}, {"precision", precision}});
}

void CudaParityTest::SetUp() {
  try {
    // fp32 explicitly: the backend's default precision is bf16. Ops follow their tensors' dtypes
    // either way; fp32 keeps compute_dtype() what the fp32 tests assume.
    cuda_ = make_cuda_backend("fp32");
  } catch (const Error& e) {
    GTEST_SKIP() << "no CUDA device: " << e.what() << cuda_plugin_rejection();
  }
  cpu_ = cpu_backend(2);
}

void CudaParityTest::TearDown() {
  if (cuda_) {
    EXPECT_NO_THROW(cuda_->synchronize()) << "work left on the CUDA stream failed";
  }
}

TensorPair CudaParityTest::same_random(const Shape& shape, uint64_t seed, float scale,
                                       std::vector<float>* host) {
  std::vector<float> values = random_values(static_cast<size_t>(shape_numel(shape)), seed, scale);
  TensorPair p = same_values(values, shape);
  if (host != nullptr) *host = std::move(values);
  return p;
}

TensorPair CudaParityTest::same_values(const std::vector<float>& values, const Shape& shape) {
  return {tensor_from(cpu(), values, shape), tensor_from(cuda(), values, shape)};
}

TensorPair CudaParityTest::same_ints(const std::vector<int32_t>& values, const Shape& shape) {
  return {tensor_from_i32(cpu(), values, shape), tensor_from_i32(cuda(), values, shape)};
}

TensorPair CudaParityTest::poisoned(const Shape& shape) {
  TensorPair p{cpu().empty(shape), cuda().empty(shape)};
  cpu().fill(p.cpu, std::numeric_limits<float>::quiet_NaN());
  cuda().fill(p.cuda, std::numeric_limits<float>::quiet_NaN());
  return p;
}

void CudaParityTest::expect_matches_cpu(const TensorPair& p, Tolerance tol,
                                        const std::string& what) {
  ASSERT_EQ(p.cpu.shape(), p.cuda.shape()) << what;
  expect_close_to_cpu(cuda_values(p), cpu_values(p), tol, what);
}

void CudaParityTest::expect_ints_match_cpu(const TensorPair& p, const std::string& what) {
  ASSERT_EQ(p.cpu.shape(), p.cuda.shape()) << what;
  EXPECT_EQ(to_vector_i32(cuda(), p.cuda), to_vector_i32(cpu(), p.cpu)) << what;
}

TensorPair CudaParityTest::same_rounded(const std::vector<float>& values, const Shape& shape,
                                        DType dtype) {
  TensorPair p{tensor_from(cpu(), round_to(dtype, values), shape), cuda().empty(shape, dtype)};
  cuda().convert(p.cuda, tensor_from(cuda(), values, shape));
  return p;
}

TensorPair CudaParityTest::same_rounded_random(const Shape& shape, uint64_t seed, DType dtype,
                                               float scale) {
  return same_rounded(random_values(static_cast<size_t>(shape_numel(shape)), seed, scale), shape,
                      dtype);
}

TensorPair CudaParityTest::poisoned(const Shape& shape, DType cuda_dtype) {
  TensorPair p{cpu().empty(shape), cuda().empty(shape, cuda_dtype)};
  cpu().fill(p.cpu, std::numeric_limits<float>::quiet_NaN());
  cuda().fill(p.cuda, std::numeric_limits<float>::quiet_NaN());
  return p;
}

std::vector<float> CudaParityTest::cuda_floats(const Tensor& t) {
  if (t.dtype() == DType::kF32) return to_vector(cuda(), t);
  Tensor wide = cuda().empty(t.shape());
  cuda().convert(wide, t);
  return to_vector(cuda(), wide);
}

void CudaParityTest::expect_rounded_matches_cpu(const TensorPair& p, Tolerance tol,
                                                const std::string& what) {
  ASSERT_EQ(p.cpu.shape(), p.cuda.shape()) << what;
  expect_close_to_cpu(cuda_floats(p.cuda), cpu_values(p), tol, what);
}

void CudaParityTest::expect_is_rounded_cpu(const TensorPair& p, const std::string& what) {
  ASSERT_EQ(p.cpu.shape(), p.cuda.shape()) << what;
  const std::vector<float> got = cuda_floats(p.cuda);
  const std::vector<float> want = round_to(p.cuda.dtype(), cpu_values(p));
  expect_close_to_cpu(got, want, kExact, what + " (the CPU's f32 result, rounded)");
}

float round_to(DType dtype, float value) {
  switch (dtype) {
    case DType::kBF16:
      return bf16_to_f32(f32_to_bf16(value));
    case DType::kF16:
      return f16_to_f32(f32_to_f16(value));
    default:
      return value;
  }
}

std::vector<float> round_to(DType dtype, std::vector<float> values) {
  for (float& v : values) v = round_to(dtype, v);
  return values;
}

double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return std::ldexp(1.0, -8);
    case DType::kF16:
      return std::ldexp(1.0, -11);
    default:
      return 0.0;
  }
}

Tolerance rounded_once(Tolerance f32, DType dtype) {
  if (dtype == DType::kF32) return f32;
  const double u = unit_roundoff(dtype);
  const double subnormal_half_spacing = dtype == DType::kF16 ? std::ldexp(1.0, -25) : 0.0;
  return {f32.rtol + 1.1 * u, f32.atol * (1.0 + u) + subnormal_half_spacing};
}

void expect_close_to_cpu(const std::vector<float>& cuda, const std::vector<float>& cpu,
                         Tolerance tol, const std::string& what) {
  if (cuda.size() != cpu.size()) {
    ADD_FAILURE() << what << ": " << cuda.size() << " CUDA values vs " << cpu.size() << " CPU";
    return;
  }
  size_t mismatches = 0, first = 0, worst = 0;
  double worst_excess = 0.0;  // error / bound of the worst mismatch
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double want = cpu[i], got = cuda[i];
    bool ok;
    double excess;
    if (std::isinf(want)) {
      ok = got == want;
      excess = ok ? 0.0 : std::numeric_limits<double>::infinity();
    } else {
      const double error = std::abs(got - want);
      const double bound = tol.atol + tol.rtol * std::abs(want);
      ok = error <= bound;  // false for NaN on either side
      excess = ok ? 0.0
                  : (bound > 0.0 && !std::isnan(error) ? error / bound
                                                       : std::numeric_limits<double>::infinity());
    }
    if (ok) continue;
    if (mismatches++ == 0) first = i;
    if (!(excess <= worst_excess)) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (mismatches == 0) return;
  std::ostringstream report;
  report.precision(9);
  report << what << ": " << mismatches << " of " << cpu.size() << " values outside rtol "
         << tol.rtol << " / atol " << tol.atol << "; first at " << first << " (cuda " << cuda[first]
         << ", cpu " << cpu[first] << "), worst at " << worst << " (cuda " << cuda[worst]
         << ", cpu " << cpu[worst] << ", " << worst_excess << "x the bound)";
  ADD_FAILURE() << report.str();
}

std::vector<uint32_t> float_bits(const std::vector<float>& values) {
  std::vector<uint32_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = std::bit_cast<uint32_t>(values[i]);
  return bits;
}

int64_t ulp_distance(float a, float b) {
  // Maps the float line onto the integers monotonically (-0 and +0 both to 0).
  auto ordered = [](float f) {
    const int64_t i = std::bit_cast<int32_t>(f);
    return i < 0 ? int64_t{std::numeric_limits<int32_t>::min()} - i : i;
  };
  const int64_t d = ordered(a) - ordered(b);
  return d < 0 ? -d : d;
}

}  // namespace nnkit::test
