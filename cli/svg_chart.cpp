// Purpose: see svg_chart.h.
#include "svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "nnkit/error.h"

namespace nnkit::cli {

namespace {

// Escapes the characters XML gives meaning to (run names and paths go into text elements).
std::string xml_text(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A tick label with as many decimals as the tick spacing needs.
std::string tick_label(double value, double spacing) {
  std::ostringstream out;
  const int decimals =
      spacing >= 1 ? 0 : std::min(6, static_cast<int>(std::ceil(-std::log10(spacing))));
  out.setf(std::ios::fixed);
  out.precision(decimals);
  out << value;
  return out.str();
}

}  // namespace

std::pair<double, double> parse_y_range(const std::string& flag, const std::string& text) {
  const size_t comma = text.find(',');
  const std::string lo_text = text.substr(0, comma);
  const std::string hi_text = comma == std::string::npos ? "" : text.substr(comma + 1);
  char* end_lo = nullptr;
  char* end_hi = nullptr;
  const double lo = std::strtod(lo_text.c_str(), &end_lo);
  const double hi = std::strtod(hi_text.c_str(), &end_hi);
  if (lo_text.empty() || hi_text.empty() || *end_lo != '\0' || *end_hi != '\0' || !(hi > lo)) {
    throw UsageError("cli", flag + " expects LO,HI with LO < HI (e.g. " + flag +
                                " 1.5,2.5), got '" + text + "'");
  }
  return {lo, hi};
}

std::string chart_color(size_t index) {
  static const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return kPalette[index % (sizeof(kPalette) / sizeof(kPalette[0]))];
}

std::string line_chart_svg(const ChartSpec& spec) {
  double x0 = 0, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  size_t longest_label = 0;
  for (const ChartSeries& s : spec.series) {
    longest_label = std::max(longest_label, s.label.size());
    for (const Point& p : s.points) {
      if (!std::isfinite(p.value)) continue;
      x1 = std::max(x1, p.step);
      y0 = std::min(y0, p.value);
      y1 = std::max(y1, p.value);
    }
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y0 > y1) y0 = 0, y1 = 1;
  // Round the value range outwards to a multiple of a fifth of its decade, so ticks are round.
  const double raw = std::max(y1 - y0, 1e-9);
  const double unit = std::pow(10.0, std::floor(std::log10(raw))) / 2;
  y0 = std::floor(y0 / unit) * unit;
  y1 = std::ceil(y1 / unit) * unit;
  if (y1 <= y0) y1 = y0 + unit;
  if (spec.y_range && spec.y_range->second > spec.y_range->first) {
    y0 = spec.y_range->first;
    y1 = spec.y_range->second;
  }

  const double plot_w = 720, h = 480, pad = 60;
  const double legend_w = 30 + 7.5 * static_cast<double>(longest_label);
  const double w = plot_w + legend_w;
  const auto px = [&](double step) { return pad + (step - x0) / (x1 - x0) * (plot_w - 2 * pad); };
  const auto py = [&](double v) { return h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad); };

  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h
      << "' font-family='sans-serif' font-size='13'>\n<rect width='100%' height='100%' "
         "fill='white'/>\n"
      // Curves stop at the plot's edge when a fixed y_range cuts them.
      << "<defs><clipPath id='plot-area'><rect x='" << pad << "' y='" << pad << "' width='"
      << plot_w - 2 * pad << "' height='" << h - 2 * pad << "'/></clipPath></defs>\n";
  for (int i = 0; i <= 5; ++i) {
    const double v = y0 + (y1 - y0) * i / 5;
    const double y = py(v);
    svg << "<line x1='" << pad << "' x2='" << plot_w - pad << "' y1='" << y << "' y2='" << y
        << "' stroke='#ddd'/><text x='" << pad - 8 << "' y='" << y + 4 << "' text-anchor='end'>"
        << tick_label(v, (y1 - y0) / 5) << "</text>\n";
    const double xs = x0 + (x1 - x0) * i / 5;
    svg << "<text x='" << px(xs) << "' y='" << h - pad + 18 << "' text-anchor='middle'>"
        << tick_label(xs, (x1 - x0) / 5) << "</text>\n";
  }
  for (size_t i = 0; i < spec.series.size(); ++i) {
    const ChartSeries& s = spec.series[i];
    const std::string color = s.color.empty() ? chart_color(i) : s.color;
    std::ostringstream points;
    size_t drawn = 0;
    for (const Point& p : s.points) {
      if (!std::isfinite(p.value)) continue;
      points << (drawn++ ? " " : "") << px(p.step) << "," << py(p.value);
      if (s.markers) {
        svg << "<circle cx='" << px(p.step) << "' cy='" << py(p.value) << "' r='2.5' fill='"
            << color << "' clip-path='url(#plot-area)'/>\n";
      }
    }
    if (drawn > 0) {
      svg << "<polyline clip-path='url(#plot-area)' fill='none' stroke='" << color
          << "' stroke-width='" << s.stroke_width << "' points='" << points.str() << "'/>\n";
    }
    const double ly = pad + 18.0 * static_cast<double>(i);
    svg << "<line x1='" << plot_w - pad + 12 << "' x2='" << plot_w - pad + 32 << "' y1='" << ly - 4
        << "' y2='" << ly - 4 << "' stroke='" << color << "' stroke-width='3'/>"
        << "<text x='" << plot_w - pad + 38 << "' y='" << ly << "' fill='" << color << "'>"
        << xml_text(s.label) << "</text>\n";
  }
  svg << "<text x='" << plot_w / 2 << "' y='" << h - 15 << "' text-anchor='middle'>"
      << xml_text(spec.x_label) << "</text>\n"
      << "<text x='18' y='" << h / 2 << "' transform='rotate(-90 18 " << h / 2
      << ")' text-anchor='middle'>" << xml_text(spec.y_label) << "</text>\n"
      << "<text x='" << plot_w / 2 << "' y='30' text-anchor='middle' font-size='16'>"
      << xml_text(spec.title) << "</text>\n</svg>\n";
  return svg.str();
}

}  // namespace nnkit::cli
