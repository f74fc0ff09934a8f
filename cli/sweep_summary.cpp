// Purpose: see sweep_summary.h.
#include "sweep_summary.h"

#include <cmath>

#include "common.h"
#include "metrics_file.h"
#include "nnkit/io/atomic_file.h"
#include "run_record.h"
#include "run_table.h"
#include "svg_chart.h"

namespace nnkit::cli {

namespace fs = std::filesystem;

void write_sweep_summary(const SweepSpec& sweep, const fs::path& out,
                         const std::vector<PlannedRun>& runs,
                         const std::optional<std::pair<double, double>>& y_range) {
  const std::string& metric = sweep.metric;
  const std::vector<std::string> header = {
      "run",      "overrides",    "status",        "steps",    "final " + metric, "best " + metric,
      "tokens/s", "params total", "params active", "wall time"};
  TextTable md(header), csv(header);
  ChartSpec chart;
  chart.title = sweep.file.filename().string() + ": " + metric;
  chart.y_label = metric + " (nats/token)";
  chart.y_range = y_range;
  for (const PlannedRun& planned : runs) {
    const std::optional<RunOverview> overview = read_run_overview(planned.dir);
    const std::optional<RunMetrics> metrics = read_run_metrics(planned.dir / "metrics.jsonl");
    const std::optional<double> final_value = metrics ? metrics->final_value(metric) : std::nullopt;
    const std::optional<double> best = metrics ? metrics->best_value(metric) : std::nullopt;
    const std::optional<double> speed = metrics ? metrics->mean_tokens_per_s() : std::nullopt;
    const std::string status = overview ? to_string(overview->status) : "pending";
    const std::string steps =
        std::to_string(metrics ? metrics->last_step : 0) + "/" + std::to_string(planned.steps);
    const double wall = overview ? overview->wall_s : 0;
    md.add({planned.run.name, join_words(planned.run.overrides), status, steps,
            format_optional(final_value, 4, true), format_optional(best, 4, true),
            speed ? group_digits(std::llround(*speed)) : "", group_digits(planned.params_total),
            group_digits(planned.params_active), format_duration_short(wall)});
    // Full precision: the CSV is for programs, which should read back what metrics.jsonl holds.
    csv.add({planned.run.name, join_words(planned.run.overrides), status, steps,
             format_optional(final_value, 17, false), format_optional(best, 17, false),
             format_optional(speed, 17, false), std::to_string(planned.params_total),
             std::to_string(planned.params_active), format_optional(wall, 6, false)});
    if (metrics && metrics->series(metric) != nullptr) {
      chart.series.push_back(
          {planned.run.name, "", *metrics->series(metric), 1.5, metric == "val_loss"});
    }
  }
  write_file_atomic(out / "summary.md",
                    "# Sweep " + sweep.file.string() + "\n\nBase: " + sweep.base.string() +
                        ", metric: " + metric + " (lower is better)\n\n" + md.markdown());
  write_file_atomic(out / "summary.csv", csv.csv());
  write_file_atomic(out / "curves.svg", line_chart_svg(chart));
}

}  // namespace nnkit::cli
