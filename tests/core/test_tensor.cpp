// Tensor views: reshapes, row slices and their bounds checks.
#include <gtest/gtest.h>

#include "nnkit/error.h"
#include "nnkit/tensor.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

TEST(Tensor, ViewsShareStorageAndCheckSizes) {
  auto backend = test::cpu_backend(1);
  Tensor t = test::tensor_from(*backend, {0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor flat = t.view({-1});
  EXPECT_EQ(flat.shape(), (Shape{6}));
  Tensor row = t.slice_rows(1, 2);
  EXPECT_EQ(row.shape(), (Shape{1, 3}));
  EXPECT_EQ(test::to_vector(*backend, row), (std::vector<float>{3, 4, 5}));
  EXPECT_THROW(t.view({4, 2}), ShapeError);
  EXPECT_THROW(t.slice_rows(1, 3), ShapeError);
  EXPECT_EQ(describe(t), "f32[2, 3] on cpu");
  EXPECT_EQ(t.dim(-1), 3);
  EXPECT_THROW(t.dim(2), ShapeError);
}

}  // namespace
}  // namespace nnkit

namespace nnkit {
namespace {

TEST(Tensor, ElementCountsThatOverflowAreRefused) {
  // 2^32 x 2^32 does not fit in int64: the count must not wrap around to a small number.
  const int64_t big = int64_t{1} << 32;
  try {
    (void)shape_numel({big, big});
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("more elements than a 64-bit count holds"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(shape_numel({big, 2}), big * 2);
  EXPECT_THROW((void)shape_numel({4, -1}), ShapeError);
}

}  // namespace
}  // namespace nnkit
