// read_into needs a Backend; these use the CPU backend plugin and skip when it is not built.
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "nnkit/io/half.h"
#include "nnkit/io/safetensors.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

using test::expect_io_error;
using test::TempDir;

// The CPU backend is part of every build; failing to create it is a real failure, not a skip.
#define REQUIRE_BACKEND(b)      \
  auto b = test::cpu_backend(); \
  ASSERT_NE(b, nullptr)

TEST(SafetensorsReadInto, SameDtypeAndConversions) {
  REQUIRE_BACKEND(backend);
  TempDir dir;
  const std::vector<float> w = {1.0f, -2.0f, 0.5f, 3.0f, 1e-3f, -7.25f};
  std::vector<uint16_t> bf(6), hf(6);
  f32_to_bf16(w.data(), bf.data(), 6);
  f32_to_f16(w.data(), hf.data(), 6);
  const std::vector<int32_t> ids = {3, 1, 4, 1};
  write_safetensors(dir / "m.safetensors", {{"w", DType::kF32, {2, 3}, w.data()},
                                            {"w_bf16", DType::kBF16, {2, 3}, bf.data()},
                                            {"w_f16", DType::kF16, {2, 3}, hf.data()},
                                            {"ids", DType::kI32, {4}, ids.data()}});
  SafetensorsFile f(dir / "m.safetensors");

  Tensor dst = backend->empty({2, 3}, DType::kF32);
  f.read_into("w", *backend, dst);
  EXPECT_EQ(test::to_vector(*backend, dst), w);

  f.read_into("w_bf16", *backend, dst);
  std::vector<float> expect(6);
  bf16_to_f32(bf.data(), expect.data(), 6);
  EXPECT_EQ(test::to_vector(*backend, dst), expect);

  f.read_into("w_f16", *backend, dst);
  f16_to_f32(hf.data(), expect.data(), 6);
  EXPECT_EQ(test::to_vector(*backend, dst), expect);

  Tensor idst = backend->empty({4}, DType::kI32);
  f.read_into("ids", *backend, idst);
  EXPECT_EQ(test::to_vector_i32(*backend, idst), ids);
}

TEST(SafetensorsReadInto, MismatchesNameFileTensorAndShapes) {
  REQUIRE_BACKEND(backend);
  TempDir dir;
  const std::vector<float> w(6, 1.0f);
  const std::vector<int32_t> ids = {1, 2};
  write_safetensors(dir / "m.safetensors",
                    {{"w", DType::kF32, {2, 3}, w.data()}, {"ids", DType::kI32, {2}, ids.data()}});
  SafetensorsFile f(dir / "m.safetensors");
  Tensor wrong_shape = backend->empty({3, 2}, DType::kF32);
  expect_io_error([&] { f.read_into("w", *backend, wrong_shape); },
                  {"m.safetensors", "tensor 'w'", "[2, 3]", "[3, 2]"});
  Tensor wrong_dtype = backend->empty({2}, DType::kF32);
  expect_io_error([&] { f.read_into("ids", *backend, wrong_dtype); },
                  {"tensor 'ids'", "stored as I32", "destination is f32"});
  expect_io_error([&] { f.read_into("missing", *backend, wrong_dtype); }, {"no tensor 'missing'"});
  expect_io_error([&] { f.read_into("w", *backend, Tensor()); }, {"undefined"});
}

}  // namespace
}  // namespace nnkit
