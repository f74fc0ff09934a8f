// Purpose: backend/cpu rejects shape, dtype and index errors with a ShapeError tagged
// "[backend/cpu] <op>: ..." before touching memory. Owned by the backend/cpu tests.
#include <functional>
#include <string>

#include "nnkit/error.h"
#include "reference.h"

namespace nnkit::test {
namespace {

using BackendErrors = CpuBackendTest;

// Runs `fn`, expecting a ShapeError whose message starts with the tagged op name.
void expect_shape_error(const std::function<void()>& fn, const std::string& op) {
  try {
    fn();
    ADD_FAILURE() << op << " did not throw";
  } catch (const ShapeError& e) {
    EXPECT_EQ(e.component(), "backend/cpu");
    EXPECT_NE(std::string(e.what()).find("[backend/cpu] " + op + ":"), std::string::npos)
        << e.what();
  }
}

TEST_F(BackendErrors, ShapeAndDtypeMismatchesNameTheOp) {
  Tensor a = be().zeros({3, 4}), b = be().zeros({5, 2}), c = be().zeros({3, 2});
  expect_shape_error([&] { be().gemm(a, false, b, false, c); }, "gemm");
  expect_shape_error([&] { be().gemm(a, false, be().zeros({4, 2}), false, b); }, "gemm");
  expect_shape_error([&] { be().add(c, a, a); }, "add");
  Tensor ints = be().zeros({3, 4}, DType::kI32);
  expect_shape_error([&] { be().axpy(a, 1.0f, ints); }, "axpy");
  expect_shape_error([&] { be().copy(a, c); }, "copy");
  expect_shape_error([&] { be().rmsnorm_forward(a, be().zeros({3}), 1e-5f, a, be().zeros({3})); },
                     "rmsnorm_forward");
  expect_shape_error([&] { be().swiglu_forward(a, c, a); }, "swiglu_forward");
  expect_shape_error([&] { be().softmax_rows(a, c); }, "softmax_rows");
  expect_shape_error(
      [&] {
        be().topk_rows(a, 5, be().zeros({3, 5}), be().zeros({3, 5}, DType::kI32));
      },
      "topk_rows");
  expect_shape_error(
      [&] {
        be().rope(a, tensor_from_i32(be(), {0, 1, 2}, {3}), 1, 3, 1e4f, false);
      },
      "rope");
  expect_shape_error([&] { be().row_dot(a, a, be().zeros({4})); }, "row_dot");
  expect_shape_error([&] { be().sum_squares(a, be().zeros({2})); }, "sum_squares");
  expect_shape_error([&] { be().scale_rows(a, be().zeros({4})); }, "scale_rows");
  AdamWStep step;
  expect_shape_error([&] { be().adamw_update(a, a, a, c, step); }, "adamw_update");
}

TEST_F(BackendErrors, AttentionGeometryIsChecked) {
  AttentionShape s;
  s.batch = 1;
  s.q_len = 4;
  s.kv_len = 4;
  s.kv_capacity = 4;
  s.n_heads = 3;
  s.n_kv_heads = 2;  // 3 heads cannot share 2 kv heads
  s.head_dim = 2;
  Tensor q = be().zeros({4, 6}), kv = be().zeros({4, 4}), lse = be().zeros({4, 3});
  expect_shape_error([&] { be().attention_forward(q, kv, kv, Tensor(), q, lse, s); },
                     "attention_forward");
  s.n_heads = 4;
  s.kv_len = 5;  // more keys than capacity
  expect_shape_error([&] { be().attention_forward(q, kv, kv, Tensor(), q, lse, s); },
                     "attention_forward");
  s.kv_len = 4;
  Tensor q8 = be().zeros({4, 8}), lse4 = be().zeros({4, 4});
  expect_shape_error(
      [&] { be().attention_forward(q8, kv, kv, be().zeros({2}, DType::kI32), q8, lse4, s); },
      "attention_forward");
  expect_shape_error(
      [&] {
        be().attention_backward(q8, q8, kv, kv, Tensor(), q8, lse4, q8, be().zeros({4, 2}), kv, s);
      },
      "attention_backward");
}

TEST_F(BackendErrors, IndicesOutOfRange) {
  Tensor src = be().zeros({5, 3});
  expect_shape_error(
      [&] {
        be().gather_rows(src, tensor_from_i32(be(), {0, 5}, {2}), be().zeros({2, 3}));
      },
      "gather_rows");
  expect_shape_error(
      [&] {
        be().scatter_add_rows(be().zeros({2, 3}), tensor_from_i32(be(), {-2, 0}, {2}), Tensor(),
                              src);
      },
      "scatter_add_rows");
  expect_shape_error(
      [&] {
        be().cross_entropy_forward(src, tensor_from_i32(be(), {0, 1, 2, 3, 3}, {5}),
                                   be().zeros({5}));
      },
      "cross_entropy_forward");
}

}  // namespace
}  // namespace nnkit::test
