// Purpose: helpers shared by the test executables: create plugins through the real registry (the
// same path the CLI takes), fill tensors with seeded random data, copy tensors to host vectors.
// Ownership: the registry is a process-wide singleton; created components keep their library.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/registry.h"

namespace nnkit::test {

// The registry over the default search paths (the build tree's plugin folder).
Registry& registry();

// Options for kind/name from its declared specs, with `values` (YAML scalars as text, nested
// names dotted: {"rope.base", "10000"}) overriding defaults. Throws ConfigError like the config.
Options make_options(const std::string& kind, const std::string& name,
                     const std::map<std::string, std::string>& values = {});

template <typename T>
std::shared_ptr<T> create(const std::string& kind, const std::string& name,
                          const std::map<std::string, std::string>& values = {},
                          ModelDims dims = {}, Backend* backend = nullptr) {
  Options options = make_options(kind, name, values);
  CreateArgs args{options, dims, backend};
  return registry().create<T>(kind, name, args);
}

// The CPU backend plugin with `threads` threads.
std::shared_ptr<Backend> cpu_backend(int threads = 2);
// The CUDA backend plugin (backend/cuda) on `device`. Throws nnkit::Error (PluginError when the
// plugin is missing or failed to load, Error when there is no usable device or driver).
std::shared_ptr<Backend> cuda_backend(int device = 0, bool tf32 = false);

// Host <-> tensor conveniences (f32 / i32).
Tensor tensor_from(Backend& backend, const std::vector<float>& values, const Shape& shape);
Tensor tensor_from_i32(Backend& backend, const std::vector<int32_t>& values, const Shape& shape);
std::vector<float> to_vector(Backend& backend, const Tensor& t);
std::vector<int32_t> to_vector_i32(Backend& backend, const Tensor& t);
// Uniform(-scale, scale) values from a fixed seed (std::mt19937_64).
std::vector<float> random_values(size_t n, uint64_t seed, float scale = 1.0f);

}  // namespace nnkit::test
