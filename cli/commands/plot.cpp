// Purpose: `nnkit plot RUN_DIR [-o FILE] [--expert-load]`: an SVG of training and validation
// loss against step, drawn from RUN_DIR/metrics.jsonl, openable in any browser; with
// --expert-load, the largest expert's share of routed slots in each MoE layer instead (what the
// aux loss balances).
#include <iostream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "metrics_file.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "svg_chart.h"

namespace nnkit::cli {

int run_plot(const Args& raw) {
  CommandSpec spec{
      "plot",
      "nnkit plot RUN_DIR [-o FILE] [--expert-load] [--y-range LO,HI]",
      "Writes an SVG loss curve (training and validation loss by step).",
      {{"--output", "FILE", "SVG file (default: RUN_DIR/loss.svg, RUN_DIR/expert-load.svg)", false,
        "-o"},
       {"--expert-load", "",
        "plot each MoE layer's largest expert share of routed slots (1/n_experts = balanced)"},
       {"--y-range", "LO,HI", "fixed value axis, to compare charts of several runs"}},
      "RUN_DIR  a training run directory (holds metrics.jsonl)"};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  if (args.positionals().size() != 1) throw UsageError("cli", "`nnkit plot` needs one RUN_DIR");
  const std::filesystem::path run = args.positionals()[0];
  const std::filesystem::path metrics_path = run / "metrics.jsonl";
  const std::optional<RunMetrics> metrics = read_run_metrics(metrics_path);
  if (!metrics) {
    throw IoError("plot", metrics_path.string() + " does not exist; is " + run.string() +
                              " a run directory?");
  }
  if (metrics->loss.empty()) {
    throw IoError("plot", metrics_path.string() + " holds no training steps yet");
  }
  ChartSpec chart;
  chart.title = run.string();
  std::string default_name = "loss.svg";
  if (args.has("--expert-load")) {
    if (metrics->max_expert_load.empty()) {
      throw IoError("plot", metrics_path.string() +
                                " records no expert load (a dense model, or no logged step yet)");
    }
    chart.y_label = "largest expert share of routed slots";
    for (size_t layer = 0; layer < metrics->max_expert_load.size(); ++layer) {
      chart.series.push_back(
          {"layer " + std::to_string(layer), "", metrics->max_expert_load[layer]});
    }
    default_name = "expert-load.svg";
  } else {
    chart.y_label = "loss (nats/token)";
    chart.series.push_back({"train loss", "#1f77b4", metrics->loss});
    if (!metrics->val_loss.empty()) {
      chart.series.push_back({"validation loss", "#d62728", metrics->val_loss, 2.0});
    }
  }
  if (const auto range = args.get("--y-range")) chart.y_range = parse_y_range("--y-range", *range);
  const std::filesystem::path out = args.get_or("--output", (run / default_name).string());
  write_file_atomic(out, line_chart_svg(chart));
  std::cout << "wrote " << out.string() << "\n";
  return 0;
}

}  // namespace nnkit::cli
