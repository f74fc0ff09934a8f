// Purpose: dispatch and combine for `moe/*` Experts plugins, so that an expert FFN implements only
// its per-expert math. The router has grouped the kept (token, slot) pairs by expert
// (Routing::token, slot, offsets: rows [offsets[e], offsets[e+1]) are expert e's); dispatch()
// gathers those rows of x and their gates, the plugin runs its products on each expert's block,
// and combine() adds gate * y_row back into each token's output row. The backward helpers are the
// same steps read in reverse. Both Routing layouts work: the compact one (the first n_routed rows)
// and the static one of ABI 3 (padded_capacity > 0: E fixed blocks whose unfilled rows have
// token = slot = -1, which gather_rows reads as zero rows and scatter_add_rows skips, so padding
// contributes nothing anywhere). Dropped slots (expert index -1) are in no block: their gate
// gradient stays 0, as the Experts contract requires.
// Ownership: ExpertRows holds views of the Routing's tensors and the tensors it gathered; keep it
// (as the layer's saved state) from forward_routed to backward_routed. Header-only: every step is
// a Backend op, nothing here crosses the plugin boundary. Thread-safety: none (one backend).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/error.h"
#include "nnkit/layer.h"

namespace nnkit::moe {

// The rows one forward_routed dispatched, grouped by expert.
struct ExpertRows {
  int64_t n_tokens = 0;          // N
  int64_t top_k = 0;             // k
  int64_t rows = 0;              // M: routed rows (compact) or E * capacity (static layout)
  std::vector<int64_t> offsets;  // (E + 1) host: expert e owns rows [offsets[e], offsets[e+1])
  Tensor token;                  // (M) i32 token of each row (-1 = padding)
  Tensor slot;                   // (M) i32 flat slot n * k + rank of each row (-1 = padding)
  Tensor gate;                   // (M) f32 gate of each row (0 for padding)
  Tensor x;                      // (M, C) the rows of x, in x's dtype (zero rows for padding)

  int64_t begin(int64_t e) const { return offsets[static_cast<size_t>(e)]; }
  int64_t end(int64_t e) const { return offsets[static_cast<size_t>(e) + 1]; }
  // Expert e's block of a row-grouped (M, ...) tensor.
  Tensor block(const Tensor& grouped, int64_t e) const {
    return grouped.slice_rows(begin(e), end(e));
  }
};

// Checks that `routing` fits x (N, C) and `n_experts`, then gathers x's rows and the gates.
// Throws ShapeError tagged `component` when they do not fit.
inline ExpertRows dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                           int64_t n_experts, const std::string& component) {
  NNKIT_CHECK_SHAPE(x.rank() == 2 && x.dim(0) == routing.n_tokens, component,
                    "forward_routed expects x of shape (N, C) with N = routing.n_tokens (" +
                        std::to_string(routing.n_tokens) + "), got " + describe(x));
  NNKIT_CHECK_SHAPE(routing.n_experts == n_experts &&
                        static_cast<int64_t>(routing.offsets.size()) == n_experts + 1 &&
                        routing.offsets.back() == routing.n_routed &&
                        (routing.n_routed == 0 || routing.token.numel() >= routing.n_routed),
                    component,
                    "the routing does not match " + std::to_string(n_experts) +
                        " experts (offsets for each expert and n_routed rows expected)");
  ExpertRows rows;
  rows.n_tokens = routing.n_tokens;
  rows.top_k = routing.top_k;
  rows.rows = routing.n_routed;
  rows.offsets = routing.offsets;
  if (rows.rows == 0) return rows;
  rows.token = routing.token.slice_rows(0, rows.rows);
  rows.slot = routing.slot.slice_rows(0, rows.rows);
  rows.x = backend.empty({rows.rows, x.dim(1)}, x.dtype());
  backend.gather_rows(x, rows.token, rows.x);
  Tensor gate = backend.empty({rows.rows, 1});
  backend.gather_rows(routing.gate.view({routing.n_tokens * routing.top_k, 1}), rows.slot, gate);
  rows.gate = gate.view({rows.rows});
  return rows;
}

// y (N, C) in `dtype` = sum over rows m of gate[m] * y_rows[m] added into row token[m]
// (deterministic: in row order). y_rows: (M, C).
inline Tensor combine(Backend& backend, const ExpertRows& rows, const Tensor& y_rows,
                      int64_t hidden, DType dtype) {
  Tensor y = backend.zeros({rows.n_tokens, hidden}, dtype);
  if (rows.rows > 0) backend.scatter_add_rows(y_rows, rows.token, rows.gate, y);
  return y;
}

// The backward of combine. dy: (N, C). Returns dy_rows (M, C) = gate * dy[token] (what the
// experts' outputs receive) and sets dgate (N, k) f32 = <dy[token], y_rows> at each row's slot,
// 0 at dropped slots (allocated here, as Experts::backward_routed promises).
inline Tensor combine_backward(Backend& backend, const ExpertRows& rows, const Tensor& dy,
                               const Tensor& y_rows, Tensor& dgate) {
  Tensor dgate_flat = backend.zeros({rows.n_tokens * rows.top_k, 1});
  dgate = dgate_flat.view({rows.n_tokens, rows.top_k});
  if (rows.rows == 0) return Tensor();
  Tensor dy_rows = backend.empty({rows.rows, dy.dim(1)}, dy.dtype());
  backend.gather_rows(dy, rows.token, dy_rows);
  Tensor dgate_rows = backend.empty({rows.rows});
  backend.row_dot(dy_rows, y_rows, dgate_rows);
  backend.scatter_add_rows(dgate_rows.view({rows.rows, 1}), rows.slot, Tensor(), dgate_flat);
  backend.scale_rows(dy_rows, rows.gate);
  return dy_rows;
}

// The backward of dispatch: dx (N, C) in `dtype`, each row's gradient dx_rows[m] added into
// token[m] (a token routed to k experts receives k contributions).
inline Tensor dispatch_backward(Backend& backend, const ExpertRows& rows, const Tensor& dx_rows,
                                int64_t hidden, DType dtype) {
  Tensor dx = backend.zeros({rows.n_tokens, hidden}, dtype);
  if (rows.rows > 0) backend.scatter_add_rows(dx_rows, rows.token, Tensor(), dx);
  return dx;
}

}  // namespace nnkit::moe
