// Purpose: shared pieces of the backend/cpu tests: a fixture holding the plugin-loaded backend,
// seeded random tensors, tolerance comparison, and naive double-precision references for the ops
// whose reference is more than a few lines (attention forward/backward).
// Ownership: references take and return host vectors; nothing here touches backend internals.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "support/test_support.h"

namespace nnkit::test {

class CpuBackendTest : public ::testing::Test {
 protected:
  std::shared_ptr<Backend> backend_ = cpu_backend(2);
  Backend& be() { return *backend_; }

  // Uniform(-scale, scale) tensor from a fixed seed, returned with its host copy.
  Tensor random(const Shape& shape, uint64_t seed, float scale = 1.0f,
                std::vector<float>* host = nullptr);
  std::vector<float> host(const Tensor& t) { return to_vector(be(), t); }
};

// |got - want| <= atol + rtol |want| elementwise (infinities must match exactly); on failure
// reports the first offending index.
void expect_close(const std::vector<float>& got, const std::vector<double>& want,
                  double rtol = 1e-5, double atol = 1e-6, const std::string& what = "");

std::vector<double> to_double(const std::vector<float>& v);

// Naive attention in double over the AttentionShape layout; kv_start empty = all zeros.
struct AttentionRef {
  std::vector<double> out, lse;    // forward
  std::vector<double> dq, dk, dv;  // backward (when dout was given)
};
AttentionRef attention_reference(const std::vector<double>& q, const std::vector<double>& k,
                                 const std::vector<double>& v, const std::vector<int32_t>& kv_start,
                                 const AttentionShape& s,
                                 const std::vector<double>* dout = nullptr);

}  // namespace nnkit::test
