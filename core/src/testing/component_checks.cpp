// Purpose: conformance checks of the components that are not layers: optimizers (a few steps
// against the kit's own AdamW reference for optim/adamw; for any optimizer determinism, a state
// save/restore round trip, the weight-decay rule), samplers (a valid row, ids in the vocabulary,
// a chi-square test of the draws, reproducibility), tokenizers (UTF-8 round trip, special ids)
// and schedules (finite, non-negative factors); a sampler's device path (apply_device) against
// its host path on the same rows.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "nnkit/device_sampling.h"
#include "nnkit/error.h"
#include "nnkit/generator.h"
#include "nnkit/optim.h"
#include "nnkit/sampler.h"
#include "nnkit/tokenizer.h"
#include "testing/harness.h"

namespace nnkit::testing {

using detail::Host;

namespace {

// Three parameters like a model's: a decayed weight, a norm scale (decay = false) and an
// embedding (decay = true but is_embedding, which the decay rule exempts by default).
std::vector<Parameter> optimizer_parameters(Backend& backend, uint64_t seed) {
  std::vector<Parameter> params(3);
  params[0].name = "w.weight";
  params[0].shape = {4, 3};
  params[1].name = "norm.weight";
  params[1].shape = {3};
  params[1].decay = false;
  params[2].name = "embed.weight";
  params[2].shape = {5, 3};
  params[2].is_embedding = true;
  for (Parameter& p : params) {
    Host v = detail::random_host(static_cast<size_t>(shape_numel(p.shape)), seed,
                                 detail::name_salt(p.name), 0.5);
    if (!p.decay) {
      for (double& x : v) x += 1.0;
    }
    p.value = detail::upload(backend, v, p.shape);
    p.grad = backend.zeros(p.shape);
  }
  return params;
}

std::vector<Parameter*> pointers(std::vector<Parameter>& params) {
  std::vector<Parameter*> out;
  for (Parameter& p : params) out.push_back(&p);
  return out;
}

Host gradient_of(const Parameter& p, int64_t step, uint64_t seed) {
  return detail::random_host(static_cast<size_t>(shape_numel(p.shape)), seed + step,
                             detail::name_salt(p.name) ^ 0x5eed, 1.0);
}

// `steps` steps with seeded gradients; returns the parameters' values afterwards.
std::vector<Host> run_steps(Backend& backend, Optimizer& opt, std::vector<Parameter>& params,
                            int64_t first, int64_t steps, double lr, uint64_t seed) {
  for (int64_t s = first; s < first + steps; ++s) {
    for (Parameter& p : params) detail::upload_into(backend, p.grad, gradient_of(p, s, seed));
    opt.step(backend, pointers(params), lr, 1.0f);
    for (Parameter& p : params) backend.fill(p.grad, 0.0f);
  }
  std::vector<Host> out;
  for (Parameter& p : params) out.push_back(detail::download(backend, p.value));
  return out;
}

Host flatten(const std::vector<Host>& parts) {
  Host out;
  for (const Host& h : parts) out.insert(out.end(), h.begin(), h.end());
  return out;
}

// The kit's AdamW, in double, with the decay rule of docs/conventions.md.
std::vector<Host> adamw_reference(std::vector<Host> values, const std::vector<Parameter>& params,
                                  const Options& o, int64_t steps, double lr, uint64_t seed) {
  const double b1 = o.get_float("beta1"), b2 = o.get_float("beta2"), eps = o.get_float("eps");
  const double wd = o.get_float("weight_decay");
  const bool decay_all =
      o.has("decay_norms_and_embeddings") && o.get_bool("decay_norms_and_embeddings");
  for (size_t i = 0; i < params.size(); ++i) {
    const bool decays = decay_all || (params[i].decay && !params[i].is_embedding);
    Host m(values[i].size(), 0.0), v(values[i].size(), 0.0);
    for (int64_t s = 0; s < steps; ++s) {
      const Host g = gradient_of(params[i], s, seed);
      const double c1 = 1.0 - std::pow(b1, double(s + 1)), c2 = 1.0 - std::pow(b2, double(s + 1));
      for (size_t j = 0; j < g.size(); ++j) {
        m[j] = b1 * m[j] + (1 - b1) * g[j];
        v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
        double& p = values[i][j];
        p -= lr * ((m[j] / c1) / (std::sqrt(v[j] / c2) + eps) + (decays ? wd * p : 0.0));
      }
    }
  }
  return values;
}

}  // namespace

std::vector<CheckResult> check_optimizer(const Registry& registry, const PluginInfo& info,
                                         const CheckOptions& options, Backend& backend) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  auto make = [&](const Options& o) {
    return registry.create<Optimizer>(info.kind, info.name, CreateArgs{o, options.dims, &backend});
  };
  std::shared_ptr<Optimizer> opt;
  if (!detail::guarded(rows, "created", [&] { opt = make(opts); })) return rows;
  const double lr = 1e-2;
  const int64_t steps = 3;
  const uint64_t seed = options.seed;

  detail::guarded(rows, "finite updates that move every weight", [&] {
    std::vector<Parameter> params = optimizer_parameters(backend, seed);
    std::vector<Host> before;
    for (Parameter& p : params) before.push_back(detail::download(backend, p.value));
    const std::vector<Host> after = run_steps(backend, *opt, params, 0, steps, lr, seed);
    bool finite = true, moved = true;
    for (size_t i = 0; i < after.size(); ++i) {
      for (size_t j = 0; j < after[i].size(); ++j) {
        finite = finite && std::isfinite(after[i][j]);
        moved = moved && after[i][j] != before[i][j];
      }
    }
    rows.push_back(finite && moved ? detail::pass_row("finite updates that move every weight",
                                                      std::to_string(steps) + " steps")
                                   : detail::fail_row("finite updates that move every weight",
                                                      finite ? "a weight with a nonzero gradient "
                                                               "did not change"
                                                             : "a weight became non-finite"));
    rows.push_back(opt->step_count() == steps
                       ? detail::pass_row("step_count counts steps")
                       : detail::fail_row("step_count counts steps",
                                          "step_count() is " + std::to_string(opt->step_count()) +
                                              " after " + std::to_string(steps) + " steps"));
    if (info.name == "adamw") {
      // The built-in: the kit's own reference, which the plugin cannot see.
      const std::vector<Host> expected = adamw_reference(before, params, opts, steps, lr, seed);
      rows.push_back(detail::compare_row("matches the kit's AdamW reference", flatten(after),
                                         flatten(expected), 1e-6, 1e-5));
    } else {
      rows.push_back(detail::skip_row("matches a reference",
                                      "no reference for a third-party optimizer; determinism "
                                      "and the state round trip are checked instead"));
    }
  });

  detail::guarded(rows, "deterministic", [&] {
    auto a = make(opts), b = make(opts);
    std::vector<Parameter> pa = optimizer_parameters(backend, seed);
    std::vector<Parameter> pb = optimizer_parameters(backend, seed);
    const Host ra = flatten(run_steps(backend, *a, pa, 0, steps, lr, seed));
    const Host rb = flatten(run_steps(backend, *b, pb, 0, steps, lr, seed));
    rows.push_back(ra == rb ? detail::pass_row("deterministic", "two optimizers, bitwise equal")
                            : detail::compare_row("deterministic", ra, rb, 0.0, 0.0));
  });

  detail::guarded(rows, "state save/restore round trip", [&] {
    // Two steps, save params + state; a fresh optimizer restored from them must take step 3
    // exactly as the original does.
    auto a = make(opts);
    std::vector<Parameter> pa = optimizer_parameters(backend, seed);
    run_steps(backend, *a, pa, 0, 2, lr, seed);
    auto b = make(opts);
    std::vector<Parameter> pb = optimizer_parameters(backend, seed);
    for (size_t i = 0; i < pa.size(); ++i) backend.copy(pb[i].value, pa[i].value);
    auto state_a = a->state(backend, pointers(pa));
    auto state_b = b->state(backend, pointers(pb));
    if (state_a.size() != state_b.size()) throw Error(info.id(), "state() sizes differ");
    for (size_t i = 0; i < state_a.size(); ++i) {
      if (state_a[i].first != state_b[i].first) {
        throw Error(info.id(),
                    "state() names differ: " + state_a[i].first + " vs " + state_b[i].first);
      }
      backend.copy(state_b[i].second, state_a[i].second);
    }
    b->set_step_count(a->step_count());
    const Host ra = flatten(run_steps(backend, *a, pa, 2, 1, lr, seed));
    const Host rb = flatten(run_steps(backend, *b, pb, 2, 1, lr, seed));
    CheckResult row = detail::compare_row("state save/restore round trip", rb, ra, 0.0, 0.0);
    row.detail = std::to_string(state_a.size()) + " state tensors; " + row.detail;
    rows.push_back(row);
  });

  detail::guarded(rows, "weight-decay rule", [&] {
    // Zero gradients from a fresh state: only weight decay can move a weight. Norm scales
    // (decay = false) and the embedding must not move; decayed weights shrink by one factor.
    Options o = opts;
    if (o.has("weight_decay")) {
      Options::Value v;
      v.type = OptionType::kFloat;
      v.float_value = 0.1;
      o.set("weight_decay", v);
    }
    if (o.has("decay_norms_and_embeddings")) {
      Options::Value v;
      v.type = OptionType::kBool;
      v.bool_value = false;
      o.set("decay_norms_and_embeddings", v);
    }
    auto fresh = make(o);
    std::vector<Parameter> params = optimizer_parameters(backend, seed);
    std::vector<Host> before;
    for (Parameter& p : params) before.push_back(detail::download(backend, p.value));
    fresh->step(backend, pointers(params), lr, 1.0f);
    std::vector<Host> after;
    for (Parameter& p : params) after.push_back(detail::download(backend, p.value));
    std::string problem;
    if (after[1] != before[1]) problem = "a norm scale (decay = false) moved with zero gradient";
    if (after[2] != before[2]) problem = "the embedding moved with zero gradient";
    if (problem.empty() && o.has("weight_decay")) {
      const double ratio = after[0][0] / before[0][0];
      for (size_t j = 0; j < after[0].size(); ++j) {
        if (!(std::abs(after[0][j] / before[0][j] - ratio) < 1e-5) || !(ratio < 1.0)) {
          problem = "decayed weights did not all shrink by one factor (p *= 1 - lr * wd)";
          break;
        }
      }
    }
    rows.push_back(problem.empty() ? detail::pass_row("weight-decay rule",
                                                      "norms and embeddings exempt, weights decay")
                                   : detail::fail_row("weight-decay rule", problem));
  });
  return rows;
}

std::vector<CheckResult> check_sampler(const Registry& registry, const PluginInfo& info,
                                       const CheckOptions& options, Backend* backend) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  std::shared_ptr<Sampler> sampler;
  if (!detail::guarded(rows, "created", [&] {
        sampler =
            registry.create<Sampler>(info.kind, info.name, CreateArgs{opts, options.dims, nullptr});
      })) {
    return rows;
  }
  const int64_t V = 16;  // small: the chi-square test needs every bin well filled
  std::vector<float> logits(V);
  const Host base = detail::random_host(static_cast<size_t>(V), options.seed, 41, 1.5);
  std::copy(base.begin(), base.end(), logits.begin());
  const std::vector<int32_t> history = {2, 5, 7, 5};
  std::vector<float> row = logits;
  if (!detail::guarded(rows, "apply", [&] { sampler->apply(row, history); })) return rows;
  bool any_finite = false, valid = true;
  for (float v : row) {
    any_finite = any_finite || std::isfinite(v);
    valid = valid && !std::isnan(v) && v != INFINITY;
  }
  rows.push_back(valid && any_finite
                     ? detail::pass_row("a usable row", "no NaN or +inf, a finite entry left")
                     : detail::fail_row("a usable row", valid ? "every entry is -inf"
                                                              : "the row holds NaN or +inf"));
  std::vector<float> again = logits;
  sampler->apply(again, history);
  rows.push_back(again == row ? detail::pass_row("reproducible", "same input, same row")
                              : detail::fail_row("reproducible",
                                                 "the same row and history gave another result"));
  // Draws through the generator's own pick (the chain of this sampler alone), with a fixed
  // seed: every id in the vocabulary, and the frequencies follow softmax(row) (or the argmax).
  const std::vector<std::shared_ptr<Sampler>> chain = {sampler};
  std::mt19937_64 rng(options.seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int draws = 20000;
  std::vector<double> counts(static_cast<size_t>(V), 0.0);
  bool in_range = true;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> r = logits;
    const int32_t id = pick_token(r, chain, history, uniform(rng));
    if (id < 0 || id >= V) {
      in_range = false;
      break;
    }
    counts[static_cast<size_t>(id)] += 1.0;
  }
  rows.push_back(
      in_range ? detail::pass_row("ids inside the vocabulary", std::to_string(draws) + " draws")
               : detail::fail_row("ids inside the vocabulary", "an id outside [0, V)"));
  if (!in_range || !valid || !any_finite) return rows;
  Host p(static_cast<size_t>(V), 0.0);
  if (sampler->selects_argmax()) {
    p[static_cast<size_t>(std::max_element(row.begin(), row.end()) - row.begin())] = 1.0;
  } else {
    const double top = *std::max_element(row.begin(), row.end());
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += p[i] = std::exp(double(row[i]) - top);
    for (double& x : p) x /= sum;
  }
  double chi2 = 0.0;
  int dof = -1;
  bool impossible = false;
  for (int64_t i = 0; i < V; ++i) {
    const double expected = p[i] * draws;
    if (expected == 0.0) {
      impossible = impossible || counts[i] > 0.0;
      continue;
    }
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
    ++dof;
  }
  // 99.9% quantile of chi-square (Wilson-Hilferty), dof >= 1.
  const double d = std::max(1, dof);
  const double z = 3.09;
  const double limit = d * std::pow(1.0 - 2.0 / (9.0 * d) + z * std::sqrt(2.0 / (9.0 * d)), 3.0);
  CheckResult chi;
  chi.check = "draws follow softmax(row) (chi-square)";
  chi.error = chi2;
  chi.tolerance = dof <= 0 ? 0.0 : limit;
  chi.passed = !impossible && (dof <= 0 || chi2 <= limit);
  chi.detail = impossible ? "an excluded (-inf) id was drawn"
                          : std::to_string(std::max(0, dof)) + " degrees of freedom, 99.9% bound";
  rows.push_back(chi);
  if (backend == nullptr) {
    rows.push_back(detail::skip_row("device path equals host path", "no backend given"));
    return rows;
  }
  detail::guarded(rows, "device path equals host path", [&] {
    // Two rows with their own histories: apply_device on the (2, V) tensor must keep the same
    // tokens as apply() on each row and give the same values (f32 rounding apart).
    const Host second = detail::random_host(static_cast<size_t>(V), options.seed, 42, 3.0);
    const std::vector<std::vector<int32_t>> histories = {history, {2, 9, 9}};
    std::vector<float> host_rows = logits;
    host_rows.insert(host_rows.end(), second.begin(), second.end());
    Host both(host_rows.begin(), host_rows.end());
    const DeviceSamplingContext ctx =
        make_device_sampling_context(*backend, histories, /*capacity=*/8);
    Tensor device_rows = detail::upload(*backend, both, {2, V});
    const bool has_path = sampler->apply_device(*backend, device_rows, ctx);
    if (has_path != sampler->apply_device(*backend, detail::upload(*backend, both, {2, V}), ctx)) {
      rows.push_back(detail::fail_row("device path equals host path",
                                      "apply_device answered differently for the same context"));
      return;
    }
    if (!has_path) {
      rows.push_back(detail::skip_row("device path equals host path",
                                      "the sampler has no device path (apply_device declines)"));
      return;
    }
    for (size_t b = 0; b < 2; ++b) {
      sampler->apply(std::span<float>(host_rows.data() + b * V, static_cast<size_t>(V)),
                     histories[b]);
    }
    const Host device = detail::download(*backend, device_rows);
    Host expected(host_rows.begin(), host_rows.end()), got = device;
    size_t kept_differs = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const bool host_out = std::isinf(expected[i]) && expected[i] < 0;
      const bool device_out = std::isinf(got[i]) && got[i] < 0;
      if (host_out != device_out) ++kept_differs;
      if (host_out || device_out) expected[i] = got[i] = 0.0;  // compared as kept sets
    }
    if (kept_differs > 0) {
      rows.push_back(detail::fail_row(
          "device path equals host path",
          std::to_string(kept_differs) + " tokens kept by one path and excluded by the other"));
      return;
    }
    CheckResult row =
        detail::compare_row("device path equals host path", got, expected, 1e-6, 1e-5);
    row.detail = "2 rows, same kept tokens; " + row.detail;
    rows.push_back(row);
  });
  return rows;
}

std::vector<CheckResult> check_tokenizer(const Registry& registry, const PluginInfo& info,
                                         const CheckOptions& options) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  std::shared_ptr<Tokenizer> tok;
  if (!detail::guarded(rows, "created", [&] {
        tok = registry.create<Tokenizer>(info.kind, info.name,
                                         CreateArgs{opts, options.dims, nullptr});
      })) {
    return rows;
  }
  const int64_t V = tok->vocab_size();
  const std::vector<int32_t> special = {tok->pad_id(), tok->unk_id(), tok->bos_id(), tok->eos_id()};
  bool special_ok = V > 0;
  for (size_t i = 0; i < special.size(); ++i) {
    special_ok = special_ok && special[i] >= 0 && special[i] < V;
  }
  special_ok = special_ok && special[2] != special[3];
  rows.push_back(special_ok ? detail::pass_row("special ids", "inside the vocabulary, BOS != EOS")
                            : detail::fail_row("special ids",
                                               "pad/unk/bos/eos must lie in [0, vocab_size) "
                                               "and BOS differ from EOS"));
  std::string special_text;
  detail::guarded(rows, "special ids decode to no text", [&] {
    special_text = tok->decode({tok->bos_id(), tok->eos_id()});
    rows.push_back(special_text.empty()
                       ? detail::pass_row("special ids decode to no text")
                       : detail::fail_row("special ids decode to no text",
                                          "BOS, EOS decoded to '" + special_text + "'"));
  });
  const std::vector<std::string> corpus = {"Hello, world!",
                                           "  leading and trailing  ",
                                           "line one\nline two\ttab",
                                           "caf\xc3\xa9 na\xc3\xafve \xc3\xbc",
                                           "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
                                           "emoji \xf0\x9f\x99\x82 and 1234567890",
                                           ""};
  size_t failures = 0;
  std::string first_failure;
  bool ids_ok = true;
  detail::guarded(rows, "UTF-8 round trip", [&] {
    for (const std::string& text : corpus) {
      const std::vector<int32_t> ids = tok->encode(text);
      for (int32_t id : ids) ids_ok = ids_ok && id >= 0 && id < V;
      if (tok->decode(ids) != text) {
        if (failures++ == 0) first_failure = text;
      }
    }
    rows.push_back(
        failures == 0
            ? detail::pass_row("UTF-8 round trip", std::to_string(corpus.size()) + " texts")
            : detail::fail_row(
                  "UTF-8 round trip",
                  std::to_string(failures) + " texts changed, first: '" + first_failure + "'"));
    rows.push_back(ids_ok ? detail::pass_row("encoded ids inside the vocabulary")
                          : detail::fail_row("encoded ids inside the vocabulary",
                                             "an id outside [0, vocab_size)"));
  });
  return rows;
}

std::vector<CheckResult> check_schedule(const Registry& registry, const PluginInfo& info,
                                        const CheckOptions& options) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  std::shared_ptr<Schedule> schedule;
  if (!detail::guarded(rows, "created", [&] {
        schedule = registry.create<Schedule>(info.kind, info.name,
                                             CreateArgs{opts, options.dims, nullptr});
      })) {
    return rows;
  }
  detail::guarded(rows, "finite non-negative factors", [&] {
    std::string problem;
    for (int64_t total : {1, 10, 1000}) {
      for (int64_t step = 0; step < total && problem.empty(); ++step) {
        const double f = schedule->factor(step, total);
        if (!std::isfinite(f) || f < 0.0) {
          problem = "factor(" + std::to_string(step) + ", " + std::to_string(total) +
                    ") = " + std::to_string(f);
        } else if (f != schedule->factor(step, total)) {
          problem = "factor is not a function of (step, total)";
        }
      }
    }
    rows.push_back(problem.empty() ? detail::pass_row("finite non-negative factors",
                                                      "every step of 1, 10 and 1000")
                                   : detail::fail_row("finite non-negative factors", problem));
  });
  return rows;
}

}  // namespace nnkit::testing
