// Purpose: see layer_test_util.h.
#include "layer_test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "nnkit/testing.h"
#include "support/test_support.h"

namespace nnkit::test {

namespace {

Parameter& find_parameter(Layer& layer, const std::string& name) {
  for (Parameter& p : layer.parameters()) {
    if (p.name == name) return p;
  }
  throw std::invalid_argument("no parameter named " + name);
}

uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

std::map<std::string, HostMatrix> init_parameters(Backend& backend, Layer& layer, uint64_t seed,
                                                  float scale) {
  std::map<std::string, HostMatrix> host;
  for (Parameter& p : layer.parameters()) {
    std::vector<float> values =
        random_values(static_cast<size_t>(shape_numel(p.shape)), seed ^ name_hash(p.name), scale);
    for (float& v : values) v += p.init_value;
    p.value = tensor_from(backend, values, p.shape);
    p.grad = backend.zeros(p.shape);
    host[p.name] = to_double(values);
  }
  return host;
}

void set_parameter(Backend& backend, Layer& layer, const std::string& name,
                   const std::vector<float>& values) {
  Parameter& p = find_parameter(layer, name);
  p.value = tensor_from(backend, values, p.shape);
}

void zero_grads(Backend& backend, Layer& layer) {
  for (Parameter& p : layer.parameters()) backend.fill(p.grad, 0.0f);
}

std::vector<float> grad_of(Backend& backend, Layer& layer, const std::string& name) {
  return to_vector(backend, find_parameter(layer, name).grad);
}

ForwardContext make_context(Backend& backend, int64_t batch, int64_t seq, bool training,
                            int64_t position_offset) {
  ForwardContext ctx;
  ctx.backend = &backend;
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.training = training;
  std::vector<int32_t> positions;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t)
      positions.push_back(static_cast<int32_t>(position_offset + t));
  }
  ctx.positions = tensor_from_i32(backend, positions, {batch * seq});
  return ctx;
}

HostMatrix to_double(const std::vector<float>& values) {
  return HostMatrix(values.begin(), values.end());
}

std::vector<float> to_float(const HostMatrix& values) {
  std::vector<float> out(values.size());
  std::transform(values.begin(), values.end(), out.begin(),
                 [](double v) { return static_cast<float>(v); });
  return out;
}

std::vector<double> numeric_gradient(HostMatrix& values, const std::function<double()>& objective,
                                     double eps) {
  return testing::numeric_gradient(values, objective,
                                   eps);  // the installed kit's (nnkit/testing.h)
}

void expect_close(const std::vector<float>& actual, const std::vector<double>& expected,
                  double abs_tol, double rel_tol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double scale = 0.0;
  for (double v : expected) scale = std::max(scale, std::abs(v));
  const double tol = abs_tol + rel_tol * scale;
  size_t failures = 0;
  double worst = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double diff = std::abs(static_cast<double>(actual[i]) - expected[i]);
    worst = std::max(worst, diff);
    if (!(diff <= tol)) {
      if (++failures <= 5) {
        ADD_FAILURE() << what << "[" << i << "]: got " << actual[i] << ", expected " << expected[i]
                      << " (tolerance " << tol << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size()
                          << " elements off; worst |diff| " << worst << ", max|expected| " << scale;
}

HostMatrix matmul_transposed(const HostMatrix& x, const HostMatrix& w, int64_t rows, int64_t inner,
                             int64_t cols) {
  HostMatrix y(static_cast<size_t>(rows * cols), 0.0);
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t m = 0; m < cols; ++m) {
      double sum = 0.0;
      for (int64_t c = 0; c < inner; ++c) sum += x[n * inner + c] * w[m * inner + c];
      y[n * cols + m] = sum;
    }
  }
  return y;
}

double silu(double x) {
  return x / (1.0 + std::exp(-x));
}

double dot(const HostMatrix& a, const HostMatrix& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace nnkit::test
