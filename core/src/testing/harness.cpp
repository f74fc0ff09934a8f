// Purpose: see harness.h.
#include "testing/harness.h"

#include <cmath>
#include <cstring>

#include "nnkit/error.h"

namespace nnkit::testing::detail {

uint64_t name_salt(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

Host random_host(size_t n, uint64_t seed, uint64_t salt, double scale) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull ^ salt);
  std::uniform_real_distribution<double> dist(-scale, scale);
  Host out(n);
  for (double& v : out) v = dist(rng);
  return out;
}

Tensor upload(Backend& backend, const Host& values, const Shape& shape, DType dtype) {
  Tensor t = backend.empty(shape, dtype);
  upload_into(backend, t, values);
  return t;
}

void upload_into(Backend& backend, const Tensor& t, const Host& values) {
  if (static_cast<int64_t>(values.size()) != t.numel()) {
    throw ShapeError("testing",
                     "upload of " + std::to_string(values.size()) + " values into " + describe(t));
  }
  if (t.dtype() == DType::kI32) {
    std::vector<int32_t> ints(values.size());
    for (size_t i = 0; i < values.size(); ++i) ints[i] = static_cast<int32_t>(values[i]);
    backend.copy_from_host(t, ints.data());
    return;
  }
  std::vector<float> floats(values.begin(), values.end());
  if (t.dtype() == DType::kF32) {
    backend.copy_from_host(t, floats.data());
    return;
  }
  Tensor staging = backend.from_host(floats.data(), t.shape(), DType::kF32);
  backend.convert(t, staging);
}

Host download(Backend& backend, const Tensor& t) {
  Host out(static_cast<size_t>(t.numel()));
  if (out.empty()) return out;
  if (t.dtype() == DType::kI32) {
    std::vector<int32_t> ints(out.size());
    backend.copy_to_host(ints.data(), t);
    for (size_t i = 0; i < out.size(); ++i) out[i] = ints[i];
    return out;
  }
  Tensor f32 = t;
  if (t.dtype() != DType::kF32) {
    f32 = backend.empty(t.shape(), DType::kF32);
    backend.convert(f32, t);
  }
  std::vector<float> floats(out.size());
  backend.copy_to_host(floats.data(), f32);
  for (size_t i = 0; i < out.size(); ++i) out[i] = floats[i];
  return out;
}

void set_parameter(Backend& backend, Parameter& p, const Host& values) {
  upload_into(backend, p.value, values);
  if (p.compute.defined()) backend.convert(p.compute, p.value);
}

std::vector<Host> init_parameters(Backend& backend, Layer& layer, uint64_t seed, double gain) {
  std::vector<Host> host;
  const DType compute = backend.compute_dtype();
  for (Parameter& p : layer.parameters()) {
    const size_t n = static_cast<size_t>(shape_numel(p.shape));
    const double fan_in = p.shape.empty() ? 1.0 : static_cast<double>(p.shape.back());
    Host values;
    if (p.init_std <= 0.0f) {
      values = random_host(n, seed, name_salt(p.name), 0.3);
      for (double& v : values) v += p.init_value;
    } else {
      values = random_host(n, seed, name_salt(p.name), gain * std::sqrt(3.0 / fan_in));
    }
    p.value = backend.empty(p.shape);
    p.grad = backend.zeros(p.shape);
    p.compute = compute != DType::kF32 ? backend.empty(p.shape, compute) : Tensor();
    set_parameter(backend, p, values);
    host.push_back(std::move(values));
  }
  return host;
}

void zero_grads(Backend& backend, Layer& layer) {
  for (Parameter& p : layer.parameters()) backend.fill(p.grad, 0.0f);
}

ForwardContext make_context(Backend& backend, int64_t batch, int64_t seq, bool training) {
  ForwardContext ctx;
  ctx.backend = &backend;
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.training = training;
  Host positions;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) positions.push_back(static_cast<double>(t));
  }
  ctx.positions = upload(backend, positions, {batch * seq}, DType::kI32);
  return ctx;
}

double dot(const Host& a, const Host& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) sum += a[i] * b[i];
  return sum;
}

namespace {

std::string number(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.3g", v);
  return buffer;
}

}  // namespace

CheckResult gradient_row(const std::string& check, const Host& analytic,
                         const std::vector<size_t>& indices, const Host& numeric, double abs_tol,
                         double rel_tol) {
  Host a, n;
  size_t masked = 0;
  for (size_t j = 0; j < indices.size(); ++j) {
    if (std::isnan(numeric[j])) {
      ++masked;
      continue;
    }
    a.push_back(analytic[indices[j]]);
    n.push_back(numeric[j]);
  }
  CheckResult row;
  row.check = check;
  if (n.empty()) {
    row.skipped = masked == 0;  // nothing to probe (an empty tensor) is not a failure
    row.detail = masked > 0 ? "every probed element flipped the top-k choice" : "no elements";
    return row;
  }
  const Comparison c = compare(a, n, abs_tol, rel_tol);
  row.passed = c.ok && masked * 2 <= indices.size();
  row.error = c.max_abs_diff;
  row.tolerance = c.tolerance;
  row.detail = std::to_string(n.size()) + " elements vs central differences";
  if (masked > 0) row.detail += ", " + std::to_string(masked) + " masked (top-k flipped)";
  if (!c.ok && c.worst < a.size()) {
    row.detail += "; worst: analytic " + number(a[c.worst]) + ", numeric " + number(n[c.worst]);
    if (std::abs(n[c.worst]) > 0.0)
      row.detail += " (ratio " + number(a[c.worst] / n[c.worst]) + ")";
  }
  return row;
}

CheckResult pass_row(const std::string& check, const std::string& detail) {
  CheckResult row;
  row.check = check;
  row.passed = true;
  row.detail = detail;
  return row;
}

CheckResult fail_row(const std::string& check, const std::string& detail) {
  CheckResult row;
  row.check = check;
  row.detail = detail;
  return row;
}

CheckResult skip_row(const std::string& check, const std::string& detail) {
  CheckResult row;
  row.check = check;
  row.skipped = true;
  row.detail = detail;
  return row;
}

CheckResult compare_row(const std::string& check, const Host& actual, const Host& expected,
                        double abs_tol, double rel_tol) {
  const Comparison c = compare(actual, expected, abs_tol, rel_tol);
  CheckResult row;
  row.check = check;
  row.passed = c.ok;
  row.error = c.max_abs_diff;
  row.tolerance = c.tolerance;
  row.detail = std::to_string(expected.size()) + " values";
  if (!c.ok && c.worst < actual.size() && c.worst < expected.size()) {
    row.detail += "; worst [" + std::to_string(c.worst) + "]: got " + number(actual[c.worst]) +
                  ", expected " + number(expected[c.worst]);
  }
  return row;
}

bool guarded(std::vector<CheckResult>& rows, const std::string& check,
             const std::function<void()>& fn) {
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    rows.push_back(fail_row(check, std::string("threw: ") + e.what()));
  } catch (...) {
    rows.push_back(fail_row(check, "threw something that is not a std::exception"));
  }
  return false;
}

}  // namespace nnkit::testing::detail
