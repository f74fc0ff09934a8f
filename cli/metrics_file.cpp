// Purpose: see metrics_file.h.
#include "metrics_file.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "nnkit/error.h"

namespace nnkit::cli {

namespace fs = std::filesystem;

namespace {

// Appends `value` for `layer`, growing the per-layer table as layers appear.
void add_layer_point(std::vector<std::vector<Point>>& table, size_t layer, double step,
                     double value) {
  if (table.size() <= layer) table.resize(layer + 1);
  table[layer].push_back({step, value});
}

}  // namespace

const std::vector<Point>* RunMetrics::series(const std::string& metric) const {
  if (metric == "loss") return &loss;
  if (metric == "val_loss") return &val_loss;
  const auto it = scalars.find(metric);
  return it == scalars.end() ? nullptr : &it->second;
}

std::optional<double> RunMetrics::mean_tokens_per_s() const {
  if (tokens_per_s.empty()) return std::nullopt;
  double sum = 0;
  for (const Point& p : tokens_per_s) sum += p.value;
  return sum / static_cast<double>(tokens_per_s.size());
}

std::optional<double> RunMetrics::final_value(const std::string& metric) const {
  const std::vector<Point>* s = series(metric);
  if (s == nullptr || s->empty()) return std::nullopt;
  return s->back().value;
}

std::optional<double> RunMetrics::best_value(const std::string& metric) const {
  const std::vector<Point>* s = series(metric);
  if (s == nullptr || s->empty()) return std::nullopt;
  return std::min_element(s->begin(), s->end(),
                          [](const Point& a, const Point& b) { return a.value < b.value; })
      ->value;
}

std::optional<RunMetrics> read_run_metrics(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  std::ifstream in(file);
  if (!in) throw IoError("metrics", "cannot read " + file.string());
  RunMetrics metrics;
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut short by a kill
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    const double step = j["step"].get<double>();
    for (const auto& [key, value] : j.items()) {
      if (key != "step" && value.is_number()) {
        metrics.scalars[key].push_back({step, value.get<double>()});
      }
    }
    if (j.contains("val_loss") && j["val_loss"].is_number()) {
      metrics.val_loss.push_back({step, j["val_loss"].get<double>()});
    }
    if (!j.contains("loss") || !j["loss"].is_number()) continue;
    metrics.loss.push_back({step, j["loss"].get<double>()});
    metrics.last_step = std::max(metrics.last_step, static_cast<int64_t>(step));
    if (j.contains("tokens_per_s") && j["tokens_per_s"].is_number()) {
      metrics.tokens_per_s.push_back({step, j["tokens_per_s"].get<double>()});
    }
    if (j.contains("expert_load") && j["expert_load"].is_array()) {
      const auto& layers = j["expert_load"];
      for (size_t layer = 0; layer < layers.size(); ++layer) {
        double largest = 0;
        for (const auto& share : layers[layer]) {
          if (share.is_number()) largest = std::max(largest, share.get<double>());
        }
        add_layer_point(metrics.max_expert_load, layer, step, largest);
      }
    }
    if (j.contains("dropped_fraction") && j["dropped_fraction"].is_array()) {
      const auto& layers = j["dropped_fraction"];
      for (size_t layer = 0; layer < layers.size(); ++layer) {
        if (layers[layer].is_number()) {
          add_layer_point(metrics.dropped_fraction, layer, step, layers[layer].get<double>());
        }
      }
    }
  }
  return metrics;
}

}  // namespace nnkit::cli
