// Purpose: backend/cuda determinism (scatter_add_rows with heavily repeated destinations and
// attention_backward repeat bit for bit, on one backend and on a second instance) and its error
// paths: out-of-range indices found inside kernels are reported as ShapeError by the next
// synchronize() or copy_to_host() and leave the backend usable; host tensors are rejected; an
// impossible allocation is an nnkit::Error, not a crash. Owned by the backend/cuda tests.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "nnkit/error.h"

namespace nnkit::test {
namespace {

using CudaDeterminism = CudaParityTest;
using CudaFaults = CudaParityTest;

void expect_bit_identical(const std::vector<float>& a, const std::vector<float>& b,
                          const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  const std::vector<uint32_t> ba = float_bits(a), bb = float_bits(b);
  size_t differing = 0, first = 0;
  for (size_t i = 0; i < ba.size(); ++i) {
    if (ba[i] != bb[i] && differing++ == 0) first = i;
  }
  EXPECT_EQ(differing, 0u) << what << ": first difference at " << first << " (" << a[first]
                           << " vs " << b[first] << ")";
}

// Scatter-add of 20000 rows into 8 destinations (2500 additions per element) on `backend`.
std::vector<float> scatter_add_many_repeats(Backend& backend, bool weighted) {
  const int64_t N = 20000, C = 64, R = 8;
  std::vector<int32_t> index(static_cast<size_t>(N));
  const std::vector<float> draw = random_values(index.size(), 300);
  for (size_t n = 0; n < index.size(); ++n) {
    index[n] = n % 13 == 6 ? -1 : std::min<int32_t>(R - 1, int32_t((draw[n] + 1.0f) * 0.5f * R));
  }
  Tensor src = tensor_from(backend, random_values(size_t(N * C), 301), {N, C});
  Tensor dst = tensor_from(backend, random_values(size_t(R * C), 302), {R, C});
  Tensor weight = weighted ? tensor_from(backend, random_values(size_t(N), 303), {N}) : Tensor();
  backend.scatter_add_rows(src, tensor_from_i32(backend, index, {N}), weight, dst);
  return to_vector(backend, dst);
}

TEST_F(CudaDeterminism, ScatterAddRowsWithRepeatedDestinationsRepeatsBitForBit) {
  std::shared_ptr<Backend> second_instance = cuda_backend();
  for (bool weighted : {false, true}) {
    const std::string what = weighted ? "weighted" : "unweighted";
    const std::vector<float> first = scatter_add_many_repeats(cuda(), weighted);
    expect_bit_identical(first, scatter_add_many_repeats(cuda(), weighted), what + " rerun");
    expect_bit_identical(first, scatter_add_many_repeats(*second_instance, weighted),
                         what + " on a second backend instance");
    // 2500 additions per element of a sum of size ~15: rounding differs with the order.
    expect_close_to_cpu(first, scatter_add_many_repeats(cpu(), weighted), {1e-4, 5e-4},
                        what + " against the CPU");
  }
}

struct AttentionOutputs {
  std::vector<float> out, lse, dq, dk, dv;
};

// One attention forward + backward on fresh output tensors of `backend`.
AttentionOutputs run_attention(Backend& backend, const AttentionShape& s) {
  const int64_t qrows = s.batch * s.q_len, kvrows = s.batch * s.kv_capacity;
  const int64_t q_width = s.n_heads * s.head_dim, kv_width = s.n_kv_heads * s.head_dim;
  Tensor q = tensor_from(backend, random_values(size_t(qrows * q_width), 310), {qrows, q_width});
  Tensor k =
      tensor_from(backend, random_values(size_t(kvrows * kv_width), 311), {kvrows, kv_width});
  Tensor v =
      tensor_from(backend, random_values(size_t(kvrows * kv_width), 312), {kvrows, kv_width});
  Tensor dout = tensor_from(backend, random_values(size_t(qrows * q_width), 313), q.shape());
  Tensor out = backend.empty(q.shape()), lse = backend.empty({qrows, s.n_heads});
  Tensor dq = backend.empty(q.shape()), dk = backend.empty(k.shape()),
         dv = backend.empty(v.shape());
  backend.attention_forward(q, k, v, Tensor(), out, lse, s);
  backend.attention_backward(dout, q, k, v, Tensor(), out, lse, dq, dk, dv, s);
  return {to_vector(backend, out), to_vector(backend, lse), to_vector(backend, dq),
          to_vector(backend, dk), to_vector(backend, dv)};
}

TEST_F(CudaDeterminism, AttentionBackwardRepeatsBitForBit) {
  struct Case {
    const char* name;
    int64_t heads, kv_heads, head_dim;
  };
  std::shared_ptr<Backend> second_instance = cuda_backend();
  for (const Case& c : {Case{"gqa", 8, 2, 64}, Case{"mqa", 8, 1, 128}}) {
    AttentionShape s;
    s.batch = 2;
    s.q_len = s.kv_len = s.kv_capacity = 200;
    s.n_heads = c.heads;
    s.n_kv_heads = c.kv_heads;  // dk, dv sum over the query heads sharing each KV head
    s.head_dim = c.head_dim;
    s.scale = static_cast<float>(1.0 / std::sqrt(double(c.head_dim)));
    const AttentionOutputs first = run_attention(cuda(), s);
    for (const auto& [other, how] :
         {std::pair{run_attention(cuda(), s), "rerun"},
          std::pair{run_attention(*second_instance, s), "second backend instance"}}) {
      const std::string what = std::string(c.name) + " " + how;
      expect_bit_identical(first.out, other.out, what + " out");
      expect_bit_identical(first.lse, other.lse, what + " lse");
      expect_bit_identical(first.dq, other.dq, what + " dq");
      expect_bit_identical(first.dk, other.dk, what + " dk");
      expect_bit_identical(first.dv, other.dv, what + " dv");
    }
  }
}

// Runs `fn` and returns the message of the ShapeError it throws; a missing or different exception
// is a test failure (and returns "").
std::string shape_error_message(const std::function<void()>& fn, const std::string& what) {
  try {
    fn();
  } catch (const ShapeError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": expected a ShapeError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << what << ": nothing was thrown";
  return "";
}

void expect_mentions(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' missing in: " << message;
  }
}

// The backend answers correctly after a reported fault: an add and a copy back.
void expect_backend_still_works(Backend& cuda, const std::string& what) {
  EXPECT_NO_THROW(cuda.synchronize()) << what << ": the fault must be reported only once";
  Tensor a = tensor_from(cuda, {1.0f, 2.0f, 3.0f}, {3});
  Tensor b = tensor_from(cuda, {0.5f, -4.0f, 8.0f}, {3});
  cuda.add(a, a, b);
  EXPECT_EQ(to_vector(cuda, a), (std::vector<float>{1.5f, -2.0f, 11.0f})) << what;
}

TEST_F(CudaFaults, GatherRowsIndexOutOfRangeIsReportedBySynchronize) {
  Tensor src = tensor_from(cuda(), random_values(31 * 4, 320), {31, 4});
  Tensor index = tensor_from_i32(cuda(), {0, 123457, 2}, {3});
  Tensor dst = cuda().empty({3, 4});
  // Ops only enqueue: the kernel finds the index, so the call itself returns normally.
  EXPECT_NO_THROW(cuda().gather_rows(src, index, dst));
  EXPECT_NO_THROW(cuda().scale(src, 2.0f));  // more work behind the fault
  const std::string message =
      shape_error_message([&] { cuda().synchronize(); }, "synchronize after gather_rows");
  expect_mentions(message, {"gather_rows", "123457", "31"});
  expect_backend_still_works(cuda(), "after the gather_rows fault");

  // A valid gather afterwards matches the CPU.
  std::vector<float> host;
  TensorPair table = same_random({31, 4}, 321, 1.0f, &host);
  TensorPair good_index = same_ints({30, 0, -1, 7}, {4});
  TensorPair rows = poisoned({4, 4});
  cpu().gather_rows(table.cpu, good_index.cpu, rows.cpu);
  cuda().gather_rows(table.cuda, good_index.cuda, rows.cuda);
  expect_matches_cpu(rows, kExact, "gather_rows after the fault");
}

// Only -1 means "skip": -2 is out of range, reported by the copy that synchronises.
TEST_F(CudaFaults, ScatterAddRowsNegativeIndexIsReportedByCopyToHost) {
  Tensor src = tensor_from(cuda(), random_values(2 * 3, 330), {2, 3});
  Tensor dst = cuda().zeros({5, 3});
  EXPECT_NO_THROW(
      cuda().scatter_add_rows(src, tensor_from_i32(cuda(), {1, -2}, {2}), Tensor(), dst));
  std::vector<float> back(15);
  const std::string message = shape_error_message([&] { cuda().copy_to_host(back.data(), dst); },
                                                  "copy_to_host after scatter_add_rows");
  expect_mentions(message, {"scatter_add_rows", "-2", "5"});
  expect_backend_still_works(cuda(), "after the scatter_add_rows fault");
}

// Negative targets are ignored; a target >= vocab is a fault.
TEST_F(CudaFaults, CrossEntropyTargetOutOfRangeIsReportedBySynchronize) {
  Tensor logits = tensor_from(cuda(), random_values(3 * 13, 340), {3, 13});
  Tensor losses = cuda().empty({3});
  EXPECT_NO_THROW(
      cuda().cross_entropy_forward(logits, tensor_from_i32(cuda(), {0, 40, -1}, {3}), losses));
  const std::string message =
      shape_error_message([&] { cuda().synchronize(); }, "synchronize after cross_entropy");
  expect_mentions(message, {"cross_entropy", "40", "13"});
  expect_backend_still_works(cuda(), "after the cross-entropy fault");
}

TEST_F(CudaFaults, HostTensorsAreRejectedWithAShapeError) {
  Tensor host_a = cpu().zeros({2, 3});
  Tensor device_b = cuda().zeros({2, 3}), device_out = cuda().empty({2, 3});
  expect_mentions(
      shape_error_message([&] { cuda().add(device_out, host_a, device_b); }, "add, host a"),
      {"add", "CUDA device tensors"});
  expect_mentions(shape_error_message([&] { cuda().add(host_a, host_a, host_a); }, "add, all host"),
                  {"add", "CUDA device tensors"});
  expect_mentions(shape_error_message(
                      [&] {
                        cuda().gemm(device_b, true, device_b, false, cpu().zeros({3, 3}));
                      },
                      "gemm, host c"),
                  {"gemm", "CUDA device tensors"});
  expect_backend_still_works(cuda(), "after rejected host tensors");
}

TEST_F(CudaFaults, ImpossibleAllocationIsAnOutOfMemoryError) {
  const Shape huge = {int64_t{1} << 40};  // 4 TiB of floats
  try {
    Tensor t = cuda().empty(huge);
    ADD_FAILURE() << "empty(" << to_string(huge) << ") returned a tensor";
  } catch (const Error& e) {
    std::string message = e.what();
    std::transform(message.begin(), message.end(), message.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    expect_mentions(message, {"out of", "memory"});
  }
  expect_backend_still_works(cuda(), "after the failed allocation");
}

}  // namespace
}  // namespace nnkit::test
