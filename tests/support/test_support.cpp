// Purpose: see test_support.h.
#include "support/test_support.h"

#include <random>
#include <stdexcept>

#include "nnkit/error.h"

namespace nnkit::test {

Registry& registry() {
  static Registry instance(Registry::default_search_paths());
  return instance;
}

Options make_options(const std::string& kind, const std::string& name,
                     const std::map<std::string, std::string>& values) {
  const PluginInfo& info = registry().require(kind, name);
  Options options(info.id(), "test", SourceLocation{"<test>", 0, 0});
  for (const OptionSpec& spec : info.options) {
    auto it = values.find(spec.name);
    const std::string text = it != values.end() ? it->second : spec.default_value;
    if (text.empty()) throw ConfigError(info.id(), "test did not set required option " + spec.name);
    Options::Value v = parse_option_text(spec, text, info.id());
    v.location.file = "<test>";
    const double number = spec.type == OptionType::kInt ? double(v.int_value) : v.float_value;
    if (!v.is_null && (spec.type == OptionType::kInt || spec.type == OptionType::kFloat)) {
      if ((spec.min && number < *spec.min) || (spec.max && number > *spec.max)) {
        throw ConfigError(info.id(), spec.name + " = " + text + " is out of range");
      }
    }
    options.set(spec.name, v);
  }
  for (const auto& [key, text] : values) {
    if (!options.has(key)) throw ConfigError(info.id(), "test set undeclared option " + key);
  }
  return options;
}

std::shared_ptr<Backend> cpu_backend(int threads) {
  return create<Backend>("backend", "cpu", {{"threads", std::to_string(threads)}});
}

std::shared_ptr<Backend> cuda_backend(int device, bool tf32) {
  return create<Backend>("backend", "cuda",
                         {{"device", std::to_string(device)}, {"tf32", tf32 ? "true" : "false"}});
}

Tensor tensor_from(Backend& backend, const std::vector<float>& values, const Shape& shape) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape)) {
    throw std::invalid_argument("tensor_from: size mismatch");
  }
  return backend.from_host(values.data(), shape, DType::kF32);
}

Tensor tensor_from_i32(Backend& backend, const std::vector<int32_t>& values, const Shape& shape) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape)) {
    throw std::invalid_argument("tensor_from_i32: size mismatch");
  }
  return backend.from_host(values.data(), shape, DType::kI32);
}

std::vector<float> to_vector(Backend& backend, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) backend.copy_to_host(out.data(), t);
  return out;
}

std::vector<int32_t> to_vector_i32(Backend& backend, const Tensor& t) {
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) backend.copy_to_host(out.data(), t);
  return out;
}

std::vector<float> random_values(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

}  // namespace nnkit::test
