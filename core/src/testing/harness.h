// Purpose: what the conformance checks of nnkit/testing.h share: host <-> device copies in double,
// seeded parameters and inputs, forward contexts, and the rows that compare a gradient with
// finite differences. Private to core/src/testing.
// Ownership: tensors returned live on the backend passed in.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "nnkit/layer.h"
#include "nnkit/testing.h"

namespace nnkit::testing::detail {

using Host = std::vector<double>;

// Uniform(-scale, scale) values from (seed, salt).
Host random_host(size_t n, uint64_t seed, uint64_t salt, double scale = 1.0);
uint64_t name_salt(const std::string& name);

// A device tensor of `shape` and `dtype` holding `values` (rounded to the dtype).
Tensor upload(Backend& backend, const Host& values, const Shape& shape, DType dtype = DType::kF32);
// Overwrites `t` with `values`.
void upload_into(Backend& backend, const Tensor& t, const Host& values);
// Any float or i32 tensor as doubles.
Host download(Backend& backend, const Tensor& t);

// Allocates every parameter of `layer` (value, zeroed grad, compute copy when the backend
// computes in low precision) with seeded values: scales near 1 where init_value is 1, else
// Uniform(+-gain / sqrt(fan_in)). Returns the values, parallel to layer.parameters().
std::vector<Host> init_parameters(Backend& backend, Layer& layer, uint64_t seed, double gain = 1.0);
void set_parameter(Backend& backend, Parameter& p, const Host& values);
void zero_grads(Backend& backend, Layer& layer);

ForwardContext make_context(Backend& backend, int64_t batch, int64_t seq, bool training);

double dot(const Host& a, const Host& b);

// A row comparing `analytic` (full tensor) at `indices` with `numeric` (parallel to indices);
// NaN entries of `numeric` are masked (a router's top-k flipped there) and counted.
CheckResult gradient_row(const std::string& check, const Host& analytic,
                         const std::vector<size_t>& indices, const Host& numeric, double abs_tol,
                         double rel_tol);
CheckResult pass_row(const std::string& check, const std::string& detail = "");
CheckResult fail_row(const std::string& check, const std::string& detail);
CheckResult skip_row(const std::string& check, const std::string& detail);
CheckResult compare_row(const std::string& check, const Host& actual, const Host& expected,
                        double abs_tol, double rel_tol);

// Runs `fn`, turning any exception into a failed row named `check` (appended to `rows`);
// returns whether it ran through.
bool guarded(std::vector<CheckResult>& rows, const std::string& check,
             const std::function<void()>& fn);

}  // namespace nnkit::testing::detail
