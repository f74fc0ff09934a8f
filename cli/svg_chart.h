// Purpose: the one SVG line chart of the CLI: labelled axes with five ticks each, any number of
// series, and a legend beside the plot. `nnkit plot` draws a run's loss curves with it and
// `nnkit sweep` overlays the validation curves of its runs; the output opens in any browser.
// Ownership: value types. Thread-safety: pure functions.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "metrics_file.h"

namespace nnkit::cli {

struct ChartSeries {
  std::string label;
  std::string color;  // any SVG colour; empty = the palette colour of its index
  std::vector<Point> points;
  double stroke_width = 1.5;
  bool markers = false;  // a dot on each point (sparse series such as validation loss)
};

struct ChartSpec {
  std::string title;
  std::string x_label = "step";
  std::string y_label;
  std::vector<ChartSeries> series;
  // Fixed value axis (lo, hi), so that charts meant to be compared share one scale; by default
  // the axis spans the data, rounded outwards.
  std::optional<std::pair<double, double>> y_range;
};

// "LO,HI" of a --y-range flag; throws UsageError naming `flag` unless LO < HI are numbers.
std::pair<double, double> parse_y_range(const std::string& flag, const std::string& text);
// A distinguishable colour for series `index` (a 10-colour palette, repeating).
std::string chart_color(size_t index);
// The whole SVG document. Non-finite values are left out of the axes and the lines.
std::string line_chart_svg(const ChartSpec& spec);

}  // namespace nnkit::cli
