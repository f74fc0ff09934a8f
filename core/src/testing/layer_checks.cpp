// Purpose: conformance checks of differentiable layers (norm, attention, ffn) and of MoE routers
// and experts: output shape and dtype, gradients of inputs and every parameter against central
// differences (router-safe: a probe that flips the top-k choice is masked, not compared),
// accumulation of parameter gradients, determinism, KV-cache decoding (attention) and agreement
// with a reference backend.
#include <cmath>
#include <functional>
#include <memory>
#include <utility>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "testing/harness.h"

namespace nnkit::testing {

using detail::Host;

namespace {

constexpr double kFdAbs = 2e-3;  // f32 outputs summed in double, steps of 1e-3
constexpr double kFdRel = 2e-2;

// One layer on one backend with seeded parameters, run as y = forward(x), L = <y, r>.
struct LayerHarness {
  std::shared_ptr<Layer> layer;
  Backend* backend = nullptr;
  std::vector<Host> params;
  int64_t batch = 0, seq = 0, hidden = 0;

  Host forward(const Host& x, bool training, Tensor* y_out = nullptr) {
    ForwardContext ctx = detail::make_context(*backend, batch, seq, training);
    Tensor xt = detail::upload(*backend, x, {batch * seq, hidden}, backend->compute_dtype());
    Tensor y = layer->forward(ctx, xt);
    if (y_out != nullptr) *y_out = y;
    saved_ctx = ctx;
    return detail::download(*backend, y);
  }
  Host backward(const Host& dy, const Tensor& like, Tensor* dx_out = nullptr) {
    Tensor dyt = detail::upload(*backend, dy, like.shape(), like.dtype());
    Tensor dx = layer->backward(saved_ctx, dyt);
    if (dx_out != nullptr) *dx_out = dx;
    return detail::download(*backend, dx);
  }
  std::vector<Host> grads() {
    std::vector<Host> out;
    for (Parameter& p : layer->parameters()) out.push_back(detail::download(*backend, p.grad));
    return out;
  }
  ForwardContext saved_ctx;
};

std::string interface_of(const std::string& kind) {
  if (kind == "norm") return "Norm";
  if (kind == "attention") return "Attention";
  if (kind == "ffn") return "FeedForward";
  return "Layer";
}

bool implements(const std::string& kind, Layer* layer) {
  if (kind == "norm") return dynamic_cast<Norm*>(layer) != nullptr;
  if (kind == "attention") return dynamic_cast<Attention*>(layer) != nullptr;
  if (kind == "ffn") return dynamic_cast<FeedForward*>(layer) != nullptr;
  return layer != nullptr;
}

// Rows comparing each parameter's accumulated gradient after two backward passes with twice
// the first: a plugin that overwrites (=) instead of accumulating (+=) shows 1x.
CheckResult accumulate_row(const std::vector<Host>& once, const std::vector<Host>& twice,
                           const std::vector<Parameter>& params) {
  Host a, e;
  for (size_t i = 0; i < once.size(); ++i) {
    for (size_t j = 0; j < once[i].size(); ++j) {
      a.push_back(twice[i][j]);
      e.push_back(2.0 * once[i][j]);
    }
  }
  if (params.empty()) return detail::skip_row("parameter gradients accumulate", "no parameters");
  CheckResult row = detail::compare_row("parameter gradients accumulate", a, e, 1e-6, 1e-4);
  row.detail = "two backward passes give twice one pass's gradient (" + row.detail + ")";
  return row;
}

// One "gradient <name>" row per parameter of `layer`: central differences of `objective` at
// spread elements of each parameter (set on the device before each evaluation, restored after)
// against the analytic gradient `grads[i]`.
void parameter_gradient_rows(std::vector<CheckResult>& rows, Backend& backend, Layer& layer,
                             const std::vector<Host>& values, const std::vector<Host>& grads,
                             const std::function<double()>& objective,
                             const CheckOptions& options) {
  std::vector<Parameter>& ps = layer.parameters();
  for (size_t i = 0; i < ps.size(); ++i) {
    const std::string check = "gradient " + ps[i].name;
    detail::guarded(rows, check, [&] {
      Host probe = values[i];
      const std::vector<size_t> idx = spread_indices(probe.size(), options.fd_elements);
      const Host numeric = numeric_gradient_at(
          probe, idx,
          [&] {
            detail::set_parameter(backend, ps[i], probe);
            return objective();
          },
          options.fd_step);
      detail::set_parameter(backend, ps[i], values[i]);
      rows.push_back(detail::gradient_row(check, grads[i], idx, numeric, kFdAbs, kFdRel));
    });
  }
}

// A fixed routing for experts checks: token n takes experts (n + j * 3) mod (E - 1) (distinct
// per token), so one expert is left without tokens when E > 2 (an empty block must work).
Host fixed_expert_index(int64_t n_tokens, int64_t k, int64_t n_experts) {
  Host index;
  for (int64_t n = 0; n < n_tokens; ++n) {
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = (n + j * 3) % std::max<int64_t>(1, n_experts - (n_experts > 2 ? 1 : 0));
      if (j > 0 && e == static_cast<int64_t>(index.back())) e = (e + 1) % n_experts;
      index.push_back(static_cast<double>(e));
    }
  }
  return index;
}

// The Routing a router would give for `index` and `gates` ((N, k) each), sorted on `backend`.
Routing fixed_routing(Backend& backend, const Host& index, const Host& gates, int64_t n_tokens,
                      int64_t k, int64_t n_experts) {
  Routing routing;
  routing.n_tokens = n_tokens;
  routing.top_k = k;
  routing.n_experts = n_experts;
  routing.expert_index = detail::upload(backend, index, {n_tokens, k}, DType::kI32);
  routing.gate = detail::upload(backend, gates, {n_tokens, k});
  routing.token = backend.empty({n_tokens * k}, DType::kI32);
  routing.slot = backend.empty({n_tokens * k}, DType::kI32);
  Tensor offsets = backend.empty({n_experts + 1}, DType::kI32);
  Tensor load = backend.empty({n_experts});
  backend.moe_sort_by_expert(routing.expert_index.view({n_tokens * k}), n_experts, k, -1, Tensor(),
                             routing.token, routing.slot, offsets, load);
  for (double o : detail::download(backend, offsets)) {
    routing.offsets.push_back(static_cast<int64_t>(o));
  }
  routing.n_routed = routing.offsets.back();
  return routing;
}

// Tolerances of a comparison with the reference backend: f32 on both sides, or one side in
// the backend's low-precision compute dtype.
std::pair<double, double> agreement_tolerance(const Backend& backend) {
  return backend.compute_dtype() == DType::kF32 ? std::pair{1e-4, 1e-3} : std::pair{3e-2, 3e-2};
}

}  // namespace

std::vector<CheckResult> check_layer(const Registry& registry, const PluginInfo& info,
                                     const CheckOptions& options, Backend& backend,
                                     Backend* reference) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  const int64_t B = options.batch, T = options.seq, C = options.dims.hidden_dim, N = B * T;
  auto make = [&](Backend& be) {
    LayerHarness h;
    h.layer = registry.create<Layer>(info.kind, info.name, CreateArgs{opts, options.dims, &be});
    h.backend = &be;
    h.batch = B, h.seq = T, h.hidden = C;
    h.params = detail::init_parameters(be, *h.layer, options.seed);
    return h;
  };
  LayerHarness h;
  if (!detail::guarded(rows, "created on " + to_string(backend.device()),
                       [&] { h = make(backend); })) {
    return rows;
  }
  rows.push_back(implements(info.kind, h.layer.get())
                     ? detail::pass_row("implements " + interface_of(info.kind))
                     : detail::fail_row("implements " + interface_of(info.kind),
                                        "the created object is not a " + interface_of(info.kind)));
  const Host x = detail::random_host(static_cast<size_t>(N * C), options.seed, 11);
  const Host r = detail::random_host(static_cast<size_t>(N * C), options.seed, 12);
  Tensor y_tensor, dx_tensor;
  Host y, dx;
  std::vector<Host> grads_once;
  const bool ran = detail::guarded(rows, "forward and backward", [&] {
    y = h.forward(x, true, &y_tensor);
    const bool shape_ok =
        y_tensor.shape() == Shape{N, C} && y_tensor.dtype() == backend.compute_dtype();
    rows.push_back(shape_ok ? detail::pass_row("forward output shape and dtype", describe(y_tensor))
                            : detail::fail_row("forward output shape and dtype",
                                               "returned " + describe(y_tensor) + ", expected (" +
                                                   std::to_string(N) + ", " + std::to_string(C) +
                                                   ") in " + dtype_name(backend.compute_dtype())));
    if (!shape_ok) throw ShapeError(info.id(), "forward returned " + describe(y_tensor));
    dx = h.backward(r, y_tensor, &dx_tensor);
    const bool dx_ok =
        dx_tensor.shape() == Shape{N, C} && dx_tensor.dtype() == backend.compute_dtype();
    rows.push_back(
        dx_ok ? detail::pass_row("backward dx shape and dtype", describe(dx_tensor))
              : detail::fail_row("backward dx shape and dtype", "returned " + describe(dx_tensor)));
    if (!dx_ok) throw ShapeError(info.id(), "backward returned " + describe(dx_tensor));
    grads_once = h.grads();
  });
  if (!ran) return rows;

  detail::guarded(rows, "parameter gradients accumulate", [&] {
    h.forward(x, true, &y_tensor);
    h.backward(r, y_tensor);
    rows.push_back(accumulate_row(grads_once, h.grads(), h.layer->parameters()));
  });
  detail::guarded(rows, "deterministic forward", [&] {
    const Host a = h.forward(x, false), b = h.forward(x, false);
    rows.push_back(a == b ? detail::pass_row("deterministic forward", "two runs bitwise equal")
                          : detail::compare_row("deterministic forward", a, b, 0.0, 0.0));
  });

  if (backend.compute_dtype() != DType::kF32) {
    rows.push_back(detail::skip_row("finite-difference gradients",
                                    "the backend computes in " +
                                        std::string(dtype_name(backend.compute_dtype())) +
                                        "; run with an f32 backend (agreement is checked below)"));
  } else {
    const double eps = options.fd_step;
    detail::guarded(rows, "gradient dx", [&] {
      Host xs = x;
      const std::vector<size_t> idx = spread_indices(xs.size(), options.fd_elements);
      const Host numeric = numeric_gradient_at(
          xs, idx, [&] { return detail::dot(h.forward(xs, false), r); }, eps);
      rows.push_back(detail::gradient_row("gradient dx", dx, idx, numeric, kFdAbs, kFdRel));
    });
    parameter_gradient_rows(
        rows, backend, *h.layer, h.params, grads_once,
        [&] { return detail::dot(h.forward(x, false), r); }, options);
  }

  if (auto* attention = dynamic_cast<Attention*>(h.layer.get())) {
    detail::guarded(rows, "KV-cache decoding equals the full forward", [&] {
      const Host full = h.forward(x, false);
      attention->init_cache(backend, B, T);
      Host incremental(full.size());
      for (int64_t t = 0; t < T; ++t) {
        ForwardContext ctx = detail::make_context(backend, B, 1, false);
        ctx.use_kv_cache = true;
        ctx.cache_len = t;
        ctx.positions =
            detail::upload(backend, Host(static_cast<size_t>(B), double(t)), {B}, DType::kI32);
        Host xt;
        for (int64_t b = 0; b < B; ++b) {
          xt.insert(xt.end(), x.begin() + (b * T + t) * C, x.begin() + (b * T + t + 1) * C);
        }
        Tensor yt =
            attention->forward(ctx, detail::upload(backend, xt, {B, C}, backend.compute_dtype()));
        const Host y_host = detail::download(backend, yt);
        for (int64_t b = 0; b < B; ++b) {
          std::copy(y_host.begin() + b * C, y_host.begin() + (b + 1) * C,
                    incremental.begin() + (b * T + t) * C);
        }
      }
      attention->clear_cache();
      const bool f32 = backend.compute_dtype() == DType::kF32;
      rows.push_back(detail::compare_row("KV-cache decoding equals the full forward", incremental,
                                         full, f32 ? 1e-5 : 2e-2, f32 ? 1e-4 : 2e-2));
    });
  }

  if (reference != nullptr) {
    detail::guarded(rows, "agrees with " + to_string(reference->device()), [&] {
      LayerHarness ref = make(*reference);
      Tensor ref_y;
      const Host y_ref = ref.forward(x, true, &ref_y);
      const Host dx_ref = ref.backward(r, ref_y);
      const auto [abs_tol, rel_tol] = agreement_tolerance(backend);
      rows.push_back(detail::compare_row("forward agrees with " + to_string(reference->device()), y,
                                         y_ref, abs_tol, rel_tol));
      rows.push_back(detail::compare_row("dx agrees with " + to_string(reference->device()), dx,
                                         dx_ref, abs_tol, rel_tol));
      const std::vector<Host> g_ref = ref.grads();
      for (size_t i = 0; i < g_ref.size(); ++i) {
        rows.push_back(detail::compare_row(
            h.layer->parameters()[i].name + " grad agrees with " + to_string(reference->device()),
            grads_once[i], g_ref[i], abs_tol, rel_tol));
      }
    });
  }
  return rows;
}

std::vector<CheckResult> check_router(const Registry& registry, const PluginInfo& info,
                                      const CheckOptions& options, Backend& backend,
                                      Backend* reference) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  const int64_t B = options.batch, T = options.seq, C = options.dims.hidden_dim, N = B * T;
  std::shared_ptr<Router> router;
  std::vector<Host> params;
  if (!detail::guarded(rows, "created", [&] {
        router =
            registry.create<Router>(info.kind, info.name, CreateArgs{opts, options.dims, &backend});
        // A larger gain keeps the router's scores apart, so that few probes sit near a tie.
        params = detail::init_parameters(backend, *router, options.seed, 3.0);
      })) {
    return rows;
  }
  const int64_t E = router->n_experts(), k = router->top_k();
  const Host x = detail::random_host(static_cast<size_t>(N * C), options.seed, 21);
  const Host r = detail::random_host(static_cast<size_t>(N * k), options.seed, 22);
  // The objective a router's backward differentiates: <gate, r> plus its weighted auxiliary
  // losses (loss_scale 1). The load f_i is a count, constant between top-k flips.
  Host base_index;
  auto objective = [&](const Host& xs, bool* flipped) {
    ForwardContext ctx = detail::make_context(backend, B, T, true);
    Routing routing =
        router->route(ctx, detail::upload(backend, xs, {N, C}, backend.compute_dtype()));
    const Host index = detail::download(backend, routing.expert_index);
    if (flipped != nullptr) *flipped = index != base_index;
    const AuxStats stats = router->aux_stats();
    return detail::dot(detail::download(backend, routing.gate), r) +
           stats.aux_weight * stats.aux_loss + stats.z_weight * stats.z_loss;
  };
  Host dx;
  std::vector<Host> grads_once;
  const bool ran = detail::guarded(rows, "route and backward_routing", [&] {
    ForwardContext ctx = detail::make_context(backend, B, T, true);
    Routing routing =
        router->route(ctx, detail::upload(backend, x, {N, C}, backend.compute_dtype()));
    base_index = detail::download(backend, routing.expert_index);
    // Layout: every kept slot exactly once, grouped by expert, offsets consistent.
    std::string problem;
    if (routing.n_tokens != N || routing.top_k != k || routing.n_experts != E) {
      problem = "n_tokens/top_k/n_experts do not match the input and the router";
    } else if (static_cast<int64_t>(routing.offsets.size()) != E + 1 ||
               routing.offsets.front() != 0 || routing.offsets.back() != routing.n_routed) {
      problem = "offsets must have E + 1 entries from 0 to n_routed";
    } else if (routing.padded_capacity == 0) {
      const Host token = detail::download(backend, routing.token);
      const Host slot = detail::download(backend, routing.slot);
      std::vector<int> seen(static_cast<size_t>(N * k), 0);
      for (int64_t e = 0; e < E && problem.empty(); ++e) {
        for (int64_t m = routing.offsets[e]; m < routing.offsets[e + 1]; ++m) {
          const int64_t s = static_cast<int64_t>(slot[m]);
          if (s < 0 || s >= N * k || static_cast<int64_t>(token[m]) != s / k ||
              static_cast<int64_t>(base_index[s]) != e || seen[s]++ != 0) {
            problem = "row " + std::to_string(m) + " of expert " + std::to_string(e) +
                      " is not one of its kept slots (token = slot / k, once each)";
            break;
          }
        }
      }
    }
    rows.push_back(problem.empty()
                       ? detail::pass_row("routing layout", std::to_string(routing.n_routed) +
                                                                " routed slots grouped by expert")
                       : detail::fail_row("routing layout", problem));
    Tensor dgate = detail::upload(backend, r, {N, k});
    Tensor dx_t = router->backward_routing(ctx, dgate);
    const bool dx_ok = dx_t.shape() == Shape{N, C};
    rows.push_back(dx_ok ? detail::pass_row("backward_routing dx shape", describe(dx_t))
                         : detail::fail_row("backward_routing dx shape", describe(dx_t)));
    if (!dx_ok) throw ShapeError(info.id(), "backward_routing returned " + describe(dx_t));
    dx = detail::download(backend, dx_t);
    grads_once.clear();
    for (Parameter& p : router->parameters())
      grads_once.push_back(detail::download(backend, p.grad));
  });
  if (!ran) return rows;
  detail::guarded(rows, "parameter gradients accumulate", [&] {
    ForwardContext ctx = detail::make_context(backend, B, T, true);
    router->route(ctx, detail::upload(backend, x, {N, C}, backend.compute_dtype()));
    router->backward_routing(ctx, detail::upload(backend, r, {N, k}));
    std::vector<Host> twice;
    for (Parameter& p : router->parameters()) twice.push_back(detail::download(backend, p.grad));
    rows.push_back(accumulate_row(grads_once, twice, router->parameters()));
  });
  detail::guarded(rows, "deterministic routing", [&] {
    const double a = objective(x, nullptr);
    bool flipped = false;
    const double b = objective(x, &flipped);
    rows.push_back(a == b && !flipped ? detail::pass_row("deterministic routing")
                                      : detail::fail_row("deterministic routing",
                                                         "two routes of the same input differ"));
  });
  if (reference != nullptr) {
    const std::string other = to_string(reference->device());
    detail::guarded(rows, "routing agrees with " + other, [&] {
      auto ref =
          registry.create<Router>(info.kind, info.name, CreateArgs{opts, options.dims, reference});
      detail::init_parameters(*reference, *ref, options.seed, 3.0);
      ForwardContext ctx = detail::make_context(*reference, B, T, true);
      Routing routing = ref->route(ctx, detail::upload(*reference, x, {N, C}));
      const Host index = detail::download(*reference, routing.expert_index);
      rows.push_back(index == base_index
                         ? detail::pass_row("top-k choices agree with " + other)
                         : detail::fail_row("top-k choices agree with " + other,
                                            "the two backends chose different experts"));
      Tensor dx_ref = ref->backward_routing(ctx, detail::upload(*reference, r, {N, k}));
      const auto [abs_tol, rel_tol] = agreement_tolerance(backend);
      rows.push_back(detail::compare_row("dx agrees with " + other, dx,
                                         detail::download(*reference, dx_ref), abs_tol, rel_tol));
      for (size_t i = 0; i < grads_once.size(); ++i) {
        rows.push_back(detail::compare_row(
            ref->parameters()[i].name + " grad agrees with " + other, grads_once[i],
            detail::download(*reference, ref->parameters()[i].grad), abs_tol, rel_tol));
      }
    });
  }
  if (backend.compute_dtype() != DType::kF32) return rows;
  // Router-safe differences: a probe whose step changes any top-k choice is masked (NaN).
  auto masked_objective = [&](const Host& xs) {
    bool flipped = false;
    const double value = objective(xs, &flipped);
    return flipped ? NAN : value;
  };
  detail::guarded(rows, "gradient dx", [&] {
    Host xs = x;
    const std::vector<size_t> idx = spread_indices(xs.size(), options.fd_elements);
    const Host numeric = numeric_gradient_at(
        xs, idx, [&] { return masked_objective(xs); }, options.fd_step);
    rows.push_back(detail::gradient_row("gradient dx", dx, idx, numeric, kFdAbs, kFdRel));
  });
  parameter_gradient_rows(
      rows, backend, *router, params, grads_once, [&] { return masked_objective(x); }, options);
  return rows;
}

std::vector<CheckResult> check_experts(const Registry& registry, const PluginInfo& info,
                                       const CheckOptions& options, Backend& backend,
                                       Backend* reference) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  const int64_t B = options.batch, T = options.seq, C = options.dims.hidden_dim, N = B * T;
  std::shared_ptr<Experts> experts;
  std::vector<Host> params;
  if (!detail::guarded(rows, "created", [&] {
        experts = registry.create<Experts>(info.kind, info.name,
                                           CreateArgs{opts, options.dims, &backend});
        params = detail::init_parameters(backend, *experts, options.seed);
      })) {
    return rows;
  }
  const int64_t E = experts->n_experts();
  const int64_t k = std::min<int64_t>(2, E);
  const Host index = fixed_expert_index(N, k, E);
  Host gates = detail::random_host(static_cast<size_t>(N * k), options.seed, 31, 0.4);
  for (double& g : gates) g += 0.6;
  auto make_routing = [&](const Host& gate_values) {
    return fixed_routing(backend, index, gate_values, N, k, E);
  };
  const Host x = detail::random_host(static_cast<size_t>(N * C), options.seed, 32);
  const Host r = detail::random_host(static_cast<size_t>(N * C), options.seed, 33);
  auto forward = [&](const Host& xs, const Host& g, bool training, Tensor* y_out) {
    ForwardContext ctx = detail::make_context(backend, B, T, training);
    const Routing routing = make_routing(g);
    Tensor y = experts->forward_routed(
        ctx, detail::upload(backend, xs, {N, C}, backend.compute_dtype()), routing);
    if (y_out != nullptr) *y_out = y;
    return detail::download(backend, y);
  };
  Host dx, dgate;
  std::vector<Host> grads_once;
  auto run_backward = [&](Host* dx_out, Host* dgate_out) {
    Tensor y;
    forward(x, gates, true, &y);
    ForwardContext ctx = detail::make_context(backend, B, T, true);
    Tensor dgate_t;
    Tensor dx_t =
        experts->backward_routed(ctx, detail::upload(backend, r, y.shape(), y.dtype()), dgate_t);
    if (dx_out != nullptr) {
      const bool dx_ok = dx_t.shape() == Shape{N, C};
      NNKIT_CHECK_SHAPE(dx_ok, info.id(), "backward_routed returned dx " + describe(dx_t));
      NNKIT_CHECK_SHAPE(dgate_t.defined() && dgate_t.numel() == N * k, info.id(),
                        "backward_routed must write dgate (N, k)");
      *dx_out = detail::download(backend, dx_t);
      *dgate_out = detail::download(backend, dgate_t);
    }
  };
  const bool ran = detail::guarded(rows, "forward_routed and backward_routed", [&] {
    Tensor y;
    forward(x, gates, true, &y);
    const bool ok = y.shape() == Shape{N, C} && y.dtype() == backend.compute_dtype();
    rows.push_back(ok ? detail::pass_row("forward output shape and dtype", describe(y))
                      : detail::fail_row("forward output shape and dtype",
                                         "returned " + describe(y) + ", expected (" +
                                             std::to_string(N) + ", " + std::to_string(C) + ")"));
    if (!ok) throw ShapeError(info.id(), "forward_routed returned " + describe(y));
    detail::zero_grads(backend, *experts);
    run_backward(&dx, &dgate);
    rows.push_back(detail::pass_row("backward shapes", "dx (N, C), dgate (N, k)"));
    grads_once.clear();
    for (Parameter& p : experts->parameters())
      grads_once.push_back(detail::download(backend, p.grad));
  });
  if (!ran) return rows;
  detail::guarded(rows, "parameter gradients accumulate", [&] {
    run_backward(nullptr, nullptr);
    std::vector<Host> twice;
    for (Parameter& p : experts->parameters()) twice.push_back(detail::download(backend, p.grad));
    rows.push_back(accumulate_row(grads_once, twice, experts->parameters()));
  });
  detail::guarded(rows, "deterministic forward", [&] {
    const Host a = forward(x, gates, false, nullptr), b = forward(x, gates, false, nullptr);
    rows.push_back(a == b ? detail::pass_row("deterministic forward", "two runs bitwise equal")
                          : detail::compare_row("deterministic forward", a, b, 0.0, 0.0));
  });
  if (reference != nullptr) {
    const std::string other = to_string(reference->device());
    detail::guarded(rows, "agrees with " + other, [&] {
      auto ref =
          registry.create<Experts>(info.kind, info.name, CreateArgs{opts, options.dims, reference});
      detail::init_parameters(*reference, *ref, options.seed);
      ForwardContext ctx = detail::make_context(*reference, B, T, true);
      Tensor y_ref = ref->forward_routed(ctx, detail::upload(*reference, x, {N, C}),
                                         fixed_routing(*reference, index, gates, N, k, E));
      Tensor dgate_ref;
      Tensor dx_ref = ref->backward_routed(ctx, detail::upload(*reference, r, {N, C}), dgate_ref);
      const auto [abs_tol, rel_tol] = agreement_tolerance(backend);
      rows.push_back(detail::compare_row("forward agrees with " + other,
                                         forward(x, gates, false, nullptr),
                                         detail::download(*reference, y_ref), abs_tol, rel_tol));
      rows.push_back(detail::compare_row("dx agrees with " + other, dx,
                                         detail::download(*reference, dx_ref), abs_tol, rel_tol));
      rows.push_back(detail::compare_row("dgate agrees with " + other, dgate,
                                         detail::download(*reference, dgate_ref), abs_tol,
                                         rel_tol));
      for (size_t i = 0; i < grads_once.size(); ++i) {
        rows.push_back(detail::compare_row(
            ref->parameters()[i].name + " grad agrees with " + other, grads_once[i],
            detail::download(*reference, ref->parameters()[i].grad), abs_tol, rel_tol));
      }
    });
  }
  if (backend.compute_dtype() != DType::kF32) return rows;
  const double eps = options.fd_step;
  detail::guarded(rows, "gradient dx", [&] {
    Host xs = x;
    const std::vector<size_t> idx = spread_indices(xs.size(), options.fd_elements);
    const Host numeric = numeric_gradient_at(
        xs, idx, [&] { return detail::dot(forward(xs, gates, false, nullptr), r); }, eps);
    rows.push_back(detail::gradient_row("gradient dx", dx, idx, numeric, kFdAbs, kFdRel));
  });
  detail::guarded(rows, "gradient dgate", [&] {
    Host gs = gates;
    const std::vector<size_t> idx = spread_indices(gs.size(), options.fd_elements);
    const Host numeric = numeric_gradient_at(
        gs, idx, [&] { return detail::dot(forward(x, gs, false, nullptr), r); }, eps);
    rows.push_back(detail::gradient_row("gradient dgate", dgate, idx, numeric, kFdAbs, kFdRel));
  });
  parameter_gradient_rows(
      rows, backend, *experts, params, grads_once,
      [&] { return detail::dot(forward(x, gates, false, nullptr), r); }, options);
  return rows;
}

}  // namespace nnkit::testing
