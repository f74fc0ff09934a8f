// Purpose: helpers for the layer tests: give a layer's parameters seeded values (the model builder
// does this in real runs) and keep double copies for the references, build forward contexts,
// compute central finite differences, compare tensors against references with stated tolerances.
// Ownership: tensors returned live on the backend passed in; host copies are plain vectors.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/layer.h"

namespace nnkit::test {

using HostMatrix = std::vector<double>;  // row-major, shape kept by the caller

// Allocates value and zeroed grad for every parameter of `layer`. Values are
// init_value + Uniform(-scale, scale) (weights: init_value 0; norm scales: 1), seeded per name.
// Returns the values as doubles, keyed by parameter name.
std::map<std::string, HostMatrix> init_parameters(Backend& backend, Layer& layer, uint64_t seed,
                                                  float scale);
// Overwrites one parameter's value (the caller updates its own host copy).
void set_parameter(Backend& backend, Layer& layer, const std::string& name,
                   const std::vector<float>& values);
void zero_grads(Backend& backend, Layer& layer);
// Parameter gradient as a host vector.
std::vector<float> grad_of(Backend& backend, Layer& layer, const std::string& name);

// Forward context over `backend` for B sequences of T tokens at positions offset .. offset+T-1.
ForwardContext make_context(Backend& backend, int64_t batch, int64_t seq, bool training,
                            int64_t position_offset = 0);

HostMatrix to_double(const std::vector<float>& values);
std::vector<float> to_float(const HostMatrix& values);

// d(objective)/d(values[i]) by central differences; `values` is perturbed in place and restored.
std::vector<double> numeric_gradient(HostMatrix& values, const std::function<double()>& objective,
                                     double eps = 1e-5);

// Passes when |actual - expected| <= abs_tol + rel_tol * max|expected| for every element.
void expect_close(const std::vector<float>& actual, const std::vector<double>& expected,
                  double abs_tol, double rel_tol, const std::string& what);

// y (N, M) = x (N, K) w^T with w (M, K): the layout of every projection.
HostMatrix matmul_transposed(const HostMatrix& x, const HostMatrix& w, int64_t rows, int64_t inner,
                             int64_t cols);
double silu(double x);
double dot(const HostMatrix& a, const HostMatrix& b);

}  // namespace nnkit::test
