// Purpose: see generator.h.
#include "nnkit/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include "nnkit/device_sampling.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"

namespace nnkit {

int32_t pick_token(std::vector<float>& row, const std::vector<std::shared_ptr<Sampler>>& chain,
                   const std::vector<int32_t>& history, double uniform) {
  bool argmax = false;
  for (const auto& sampler : chain) {
    sampler->apply(std::span<float>(row.data(), row.size()), history);
    argmax = argmax || sampler->selects_argmax();
  }
  // The argmax skips NaN: std::max_element would keep a NaN in front (every comparison with it
  // is false) and return that token, which has no probability at all.
  size_t best = 0;
  for (size_t i = 1; i < row.size(); ++i) {
    if (std::isnan(row[best]) || row[i] > row[best]) best = i;
  }
  if (argmax || !std::isfinite(row[best])) return static_cast<int32_t>(best);
  // Inverse-CDF draw from softmax(row), in log space relative to the largest logit (every
  // exponent <= 0, so nothing overflows whatever the temperature made of the row), and in
  // double: the difference of two large floats would round in float.
  const double max_logit = row[best];
  double total = 0.0;
  std::vector<double> weights(row.size());
  for (size_t i = 0; i < row.size(); ++i) {
    weights[i] = std::isfinite(row[i]) ? std::exp(static_cast<double>(row[i]) - max_logit) : 0.0;
    total += weights[i];
  }
  double target = uniform * total;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] == 0.0) continue;
    if (target < weights[i]) return static_cast<int32_t>(i);
    target -= weights[i];
  }
  return static_cast<int32_t>(best);  // rounding at the very top end
}

std::vector<GenerationResult> generate(Transformer& model, const Tokenizer& tokenizer,
                                       const std::vector<std::shared_ptr<Sampler>>& chain,
                                       const std::vector<std::string>& prompts,
                                       const GenerateOptions& options,
                                       const TextCallback& on_text) {
  if (prompts.empty()) return {};
  const int64_t batch = static_cast<int64_t>(prompts.size());
  const int64_t limit =
      options.context_limit > 0 ? options.context_limit : model.config().max_seq_len;
  if (options.max_new_tokens < 0) throw UsageError("generate", "max_new_tokens must be >= 0");
  if (options.max_new_tokens >= limit) {
    throw UsageError("generate", "--max-new-tokens " + std::to_string(options.max_new_tokens) +
                                     " does not fit the context of " + std::to_string(limit) +
                                     " tokens (raise model.attention.rope.ntk_alpha to extend it)");
  }
  std::vector<GenerationResult> results(static_cast<size_t>(batch));
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> ids{tokenizer.bos_id()};
    const std::vector<int32_t> body = tokenizer.encode(prompts[static_cast<size_t>(b)]);
    ids.insert(ids.end(), body.begin(), body.end());
    const int64_t room = limit - options.max_new_tokens;
    if (static_cast<int64_t>(ids.size()) > room) {
      if (!options.truncate_prompt) {
        throw UsageError("generate",
                         "prompt " + std::to_string(b + 1) + " has " + std::to_string(ids.size()) +
                             " tokens; with " + std::to_string(options.max_new_tokens) +
                             " new tokens it exceeds the context of " + std::to_string(limit) +
                             " (shorten it, lower --max-new-tokens, or pass "
                             "--truncate-prompt to keep its last tokens)");
      }
      std::vector<int32_t> tail{tokenizer.bos_id()};
      tail.insert(tail.end(), ids.end() - (room - 1), ids.end());
      ids = std::move(tail);
    }
    longest = std::max<int64_t>(longest, static_cast<int64_t>(ids.size()));
    results[static_cast<size_t>(b)].prompt_ids = std::move(ids);
  }
  // Left padding: every prompt ends at column `longest - 1`; kv_start masks the pads.
  std::vector<int32_t> padded(static_cast<size_t>(batch * longest), tokenizer.pad_id());
  std::vector<int32_t> kv_start(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    const auto& ids = results[static_cast<size_t>(b)].prompt_ids;
    const int64_t pad = longest - static_cast<int64_t>(ids.size());
    kv_start[static_cast<size_t>(b)] = static_cast<int32_t>(pad);
    std::copy(ids.begin(), ids.end(), padded.begin() + b * longest + pad);
  }
  const bool any_padding =
      std::any_of(kv_start.begin(), kv_start.end(), [](int32_t s) { return s > 0; });
  if (!any_padding) kv_start.clear();

  Backend& backend = model.backend();
  const int64_t vocab = model.config().vocab_size;
  model.init_cache(batch, longest + options.max_new_tokens);
  std::vector<std::mt19937_64> rngs;
  for (int64_t b = 0; b < batch; ++b) {
    rngs.emplace_back(options.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(b));
  }
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  size_t hold_back = 0;
  for (const std::string& s : options.stop) hold_back = std::max(hold_back, s.size());

  std::vector<std::vector<int32_t>> history(static_cast<size_t>(batch));
  std::vector<std::string> text(static_cast<size_t>(batch));
  std::vector<size_t> emitted(static_cast<size_t>(batch), 0);
  std::vector<bool> done(static_cast<size_t>(batch), options.max_new_tokens == 0);
  for (int64_t b = 0; b < batch; ++b) {
    history[static_cast<size_t>(b)] = results[static_cast<size_t>(b)].prompt_ids;
    if (options.max_new_tokens == 0) results[static_cast<size_t>(b)].stop_reason = "length";
  }
  auto flush = [&](size_t b, bool final) {
    const size_t ready =
        final ? text[b].size() : (text[b].size() > hold_back ? text[b].size() - hold_back : 0);
    if (on_text && ready > emitted[b]) on_text(b, text[b].substr(emitted[b], ready - emitted[b]));
    emitted[b] = std::max(emitted[b], ready);
  };

  // On a GPU the sampler chain runs on the device and only the sampled ids come back; a chain
  // with a host-only sampler falls back to the host rows (said once). The CPU backend keeps the
  // host chain (the same work, and the host generator's draws).
  const bool on_device = backend.device().type != DeviceType::kCpu;
  DeviceSamplingContext sampling;
  Tensor device_ids;
  bool device_sampling = false;
  if (on_device) {
    sampling = make_device_sampling_context(backend, history, longest + options.max_new_tokens + 1);
  }
  std::vector<int32_t> sampled(static_cast<size_t>(batch), 0);
  std::vector<float> host;
  // With a device chain the sampled ids land in the decode step's own input tensor and the host
  // reads them two queue entries late: step s+1 (its product and its sampler) is queued before
  // the host waits for the ids of step s, and the copy of step s+1's ids is enqueued only after
  // that wait, so the wait covers the copy of step s alone and the device always has the next
  // step in its queue (a step that an EOS or a stop string made unneeded runs and is discarded).
  // Stream order keeps it exact: copy(s) reads the ids before sample(s+1) overwrites them.
  // NNKIT_DECODE_LOOKAHEAD=0 reads each step's ids before queuing the next (to compare).
  const char* lookahead_flag = std::getenv("NNKIT_DECODE_LOOKAHEAD");
  const bool lookahead_allowed =
      on_device && (lookahead_flag == nullptr || std::string(lookahead_flag) != "0");
  bool lookahead = false;
  // Picks every row's next token from `logits`. Host chain: into `sampled` at once. Device
  // chain: into device_ids; `sampled` gets them now (read_now), or the caller enqueues the copy.
  auto sample_step = [&](const Tensor& logits, int64_t step, bool read_now) {
    if (on_device && (step == 0 || device_sampling)) {
      device_sampling =
          sample_on_device(backend, chain, logits, sampling, options.seed, step, device_ids);
      if (device_sampling) {
        append_device_history(backend, sampling, device_ids);
        if (read_now) backend.copy_to_host(sampled.data(), device_ids);
        return;
      }
      if (step == 0) {
        logger()->info(
            "a sampler in the decode chain has no device path: sampling runs on the host (one "
            "copy of the logits per token)");
      }
    }
    host.resize(static_cast<size_t>(batch * vocab));
    backend.copy_to_host(host.data(), logits);
    for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
      if (done[b]) continue;
      std::vector<float> row(host.begin() + static_cast<int64_t>(b) * vocab,
                             host.begin() + static_cast<int64_t>(b + 1) * vocab);
      sampled[b] = pick_token(row, chain, history[b], uniform(rngs[b]));
    }
  };

  const auto t0 = std::chrono::steady_clock::now();
  Tensor logits = model.forward_cached(padded, batch, longest, 0, kv_start, false);
  // The steps read their lengths from device memory: on a backend that captures, the second
  // step is recorded in a CUDA Graph and replayed for every later token.
  model.begin_decode(batch, kv_start);
  if (on_device) {
    device_ids = lookahead_allowed ? model.decode_input_ids() : backend.empty({batch}, DType::kI32);
  }
  sample_step(logits, 0, !lookahead_allowed);
  lookahead = lookahead_allowed && device_sampling;
  if (lookahead) {
    backend.copy_to_host_async(sampled.data(), device_ids);
    backend.await_host_copies();
  }
  const auto t1 = std::chrono::steady_clock::now();
  int64_t cache_len = longest;
  int64_t decode_steps = 0;   // steps whose ids were used
  bool copy_pending = false;  // lookahead: a queued step's ids are on their way to `sampled`
  std::vector<int32_t> next(static_cast<size_t>(batch), tokenizer.pad_id());
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const bool last = step + 1 == options.max_new_tokens;
    if (lookahead && !last) {
      // The next step reads the ids the device sampler wrote last (decode_input_ids()).
      logits = model.decode_step_device(cache_len);
      sample_step(logits, step + 1, false);
      ++cache_len;
    }
    if (lookahead && step > 0) {
      backend.await_host_copies();  // `sampled` now holds the ids of step `step`
      copy_pending = false;
      ++decode_steps;
    }
    if (lookahead && !last) {
      backend.copy_to_host_async(sampled.data(), device_ids);
      copy_pending = true;
    }
    bool all_done = true;
    for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
      if (done[b]) continue;
      const int32_t token = sampled[b];
      next[b] = token;
      GenerationResult& r = results[b];
      if (token == tokenizer.eos_id()) {
        done[b] = true;
        r.stop_reason = "eos";
        flush(b, true);
        continue;
      }
      history[b].push_back(token);
      r.generated_ids.push_back(token);
      text[b] = tokenizer.decode(r.generated_ids);
      for (const std::string& s : options.stop) {
        const size_t at = s.empty() ? std::string::npos : text[b].find(s);
        if (at != std::string::npos) {
          text[b].resize(at);
          done[b] = true;
          r.stop_reason = "stop";
        }
      }
      if (!done[b] && static_cast<int64_t>(r.generated_ids.size()) >= options.max_new_tokens) {
        done[b] = true;
        r.stop_reason = "length";
      }
      flush(b, done[b]);
      all_done = all_done && done[b];
    }
    if (all_done || last) break;
    if (!lookahead) {
      logits = model.decode_step(next, cache_len);
      sample_step(logits, step + 1, true);
      ++cache_len;
      ++decode_steps;
    }
  }
  // A queued step nobody needs still finishes before the recording it replays is released.
  if (copy_pending) backend.await_host_copies();
  const auto t2 = std::chrono::steady_clock::now();
  const bool recorded = model.decode_recorded();
  model.end_decode();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
    results[b].text = text[b];
    results[b].prefill_tokens_per_s =
        static_cast<double>(batch * longest) / std::max(prefill_s, 1e-9);
    results[b].decode_tokens_per_s =
        static_cast<double>(batch * std::max<int64_t>(decode_steps, 1)) / std::max(decode_s, 1e-9);
    if (results[b].stop_reason.empty()) results[b].stop_reason = "length";
    results[b].decode_graph = recorded;
    results[b].device_sampling = device_sampling;
  }
  return results;
}

}  // namespace nnkit
