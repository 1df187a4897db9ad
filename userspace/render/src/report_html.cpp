// The HTML report and diff: one self-contained page for an incident review, readable offline and
// printable. Inline CSS and SVG drawn here; no script and no fetches (the page's
// Content-Security-Policy forbids both, should anything ever slip through).
//
// Every string from a trace (targets, comm, addresses, host, file names) goes through text():
// made printable as on a terminal, then HTML-escaped. Figures carry data-json="member.path",
// the member of the JSON report (closetrace-report/1, or closetrace-diff/1) they show, and
// data-value with its exact value where the text rounds it, so tests hold the page to the JSON.
#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "closetrace/analysis_text.h"
#include "closetrace/report.h"
#include "closetrace/text.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

using analysis_text::count_of;
using analysis_text::duration;

// How one recording is laid out: alone on the page, or as one column of a diff.
struct View {
    std::string json_prefix;     // "" in a report; "before." or "after." in a diff
    double chart_width = 0;      // SVG user units, about CSS pixels at the column's width
    const char* heading = "h2";  // of each section: "h3" under a diff column's "h2"
};

constexpr double kReportChartWidth = 1040;
constexpr double kDiffChartWidth = 600;

// ---------------------------------------------------------------------------------------------
// Text into HTML

// The five characters that can end a text node or a quoted attribute value.
std::string escaped(std::string_view text) {
    std::string html;
    html.reserve(text.size());
    for (const char c : text) {
        switch (c) {
            case '&': html += "&amp;"; break;
            case '<': html += "&lt;"; break;
            case '>': html += "&gt;"; break;
            case '"': html += "&quot;"; break;
            case '\'': html += "&#39;"; break;
            default: html += c;
        }
    }
    return html;
}

// Trace bytes on the page.
std::string text(std::string_view trace_bytes) { return escaped(printable(trace_bytes)); }

// At most `max_chars`, for labels in a chart (the full text goes in the caption or a tooltip).
std::string shortened(std::string_view trace_bytes, std::size_t max_chars) {
    const std::string safe = printable(trace_bytes);
    if (safe.size() <= max_chars) return escaped(safe);
    return escaped(safe.substr(0, max_chars > 3 ? max_chars - 3 : 0)) + "...";
}

// The attribute naming the JSON report member a figure shows.
std::string figure(const View& view, std::string_view member) {
    return fmt::format(" data-json=\"{}{}\"", view.json_prefix, member);
}

// ... and its value in milliseconds to the microsecond, as the JSON report rounds it; null when
// it does not exist.
std::string figure_ms(const View& view, std::string_view member, std::optional<double> ms) {
    return figure(view, member) +
           fmt::format(" data-value=\"{}\"", ms ? fmt::format("{:.3f}", *ms) : "null");
}

// The gap between two events of a close, to the microsecond a race turns on: "41 &#181;s",
// "1.207 ms", "2.001 s". HTML (the micro sign is an entity).
std::string gap_text(double ms) {
    const double us = std::abs(ms * 1000);
    if (us < 10) return fmt::format("{:.1f} &#181;s", ms * 1000);
    if (us < 1000) return fmt::format("{:.0f} &#181;s", ms * 1000);
    if (us < 1'000'000) return fmt::format("{:.3f} ms", ms);
    return duration(ms);
}

// "fin, rst TCP_ABORT_ON_DATA": the close, then the reset this host sent (its reason).
std::string close_text(const CaughtConnection& caught) {
    std::string close = caught.how ? to_string(*caught.how) : "-";
    if (caught.rst_reason) {
        close += (caught.how == CloseHow::Rst ? " " : ", rst ") + printable(*caught.rst_reason);
    }
    return escaped(close);
}

// `name_host`: the report covers several hosts.
std::string caught_request_text(const CaughtConnection& caught, bool name_host) {
    std::string line = text(analysis_text::caught_text(caught));
    if (caught.client_end) {
        line += " [" + escaped(analysis_text::client_end_text(*caught.client_end)) + "]";
    }
    if (name_host) line += " [host " + text(caught.host) + "]";
    return line;
}

const char* verdict_color(Verdict verdict) {
    switch (verdict) {
        case Verdict::LocalIdleClose: return "#4e79a7";
        case Verdict::PeerIdleClose: return "#59a14f";
        case Verdict::LocalCloseRace: return "#d62728";
        case Verdict::PeerCloseRace: return "#ff9d9a";
        case Verdict::LocalResetInflight: return "#f28e2b";
        case Verdict::PeerCloseInflight: return "#b07aa1";
        case Verdict::LocalReset: return "#9c755f";
        case Verdict::PeerReset: return "#bab0ac";
        case Verdict::Open: return "#dcdcdc";
    }
    return "#000";
}

// The verdicts whose close caught a request.
constexpr Verdict kCaughtVerdicts[] = {Verdict::LocalCloseRace, Verdict::PeerCloseRace,
                                       Verdict::LocalResetInflight, Verdict::PeerCloseInflight};

constexpr std::string_view kStyle = R"(
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       max-width: 1100px; margin: 24px auto; padding: 0 20px; }
body.diff { max-width: 1320px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 6px; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
.meta { color: #555; margin: 0 0 12px; }
.conclusion { font-size: 16px; background: #f6f8fa; border-left: 4px solid #4e79a7;
              padding: 10px 14px; margin: 12px 0; }
.closes-first .conclusion { border-left-color: #d62728; }
.outcome { font-size: 20px; font-weight: 600; }
.outcome.fixed { color: #2e7d32; } .outcome.not-fixed { color: #c62828; }
.outcome.inconclusive { color: #8d6e00; }
ol.recommendations li { margin: 4px 0; }
.warnings { color: #8d4b00; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { padding: 3px 10px; text-align: left; border-bottom: 1px solid #eee; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
body.diff table { font-size: 13px; }
body.diff th, body.diff td { padding: 3px 6px; }
ul.verdicts { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap;
              gap: 4px 18px; font-size: 14px; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 6px;
          vertical-align: -1px; border-radius: 2px; }
svg { display: block; width: 100%; height: auto; margin: 6px 0; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
svg .small { font-size: 11px; fill: #666; }
svg .label { font-weight: 600; }
svg .panel { fill: #fafafa; stroke: #e4e4e4; }
svg .axis { stroke: #999; }
svg .grid { stroke: #eee; }
svg .marker-host { stroke: #d62728; stroke-width: 2; }
svg .marker-peer { stroke: #59a14f; stroke-width: 2; }
svg .assumed { stroke-dasharray: 6 4; }
svg .gap { stroke: #999; stroke-width: 2; }
svg .gap.idle { stroke-dasharray: 5 4; }
svg .gap.window { stroke: #d62728; stroke-width: 4; }
svg .gap-label { font-size: 11px; fill: #333; }
svg .gap-label.window { fill: #c62828; font-weight: 600; }
figure.timeline { margin: 12px 0 16px; break-inside: avoid; }
figure.timeline figcaption { font-size: 14px; }
.note { color: #666; font-size: 13px; }
.side-by-side { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 28px; }
footer { color: #888; font-size: 12px; margin-top: 32px; }
@media print {
  body { max-width: none; margin: 0; font-size: 12px; }
  h2 { break-after: avoid; }
  section, figure, table { break-inside: avoid; }
}
)";

void open_page(std::string& out, const std::string& title_html, const char* body_class) {
    out += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    out +=
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">\n";
    out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    out += fmt::format("<title>{}</title>\n<style>{}</style>\n</head>\n", title_html, kStyle);
    out += fmt::format("<body class=\"{}\">\n", body_class);
}

void close_page(std::string& out, const TraceAnalysis& trace) {
    out += fmt::format(
        "<footer>Recorded by closetrace {}. Times are UTC; the figures are those of "
        "<code>--format json</code>.</footer>\n</body>\n</html>\n",
        text(trace.header.tool_version));
}

// ---------------------------------------------------------------------------------------------
// Idle before the close: a histogram per side on a logarithmic axis

constexpr std::size_t kIdleBins = 60;
// Idle times are clamped to this range on the axis (a damaged trace may hold anything).
constexpr double kShortestIdleMs = 0.001;
constexpr double kLongestIdleMs = 1e10;

// Logarithmic, and shared by both recordings of a diff so that their histograms line up.
struct IdleAxis {
    double lo_ms;
    double hi_ms;

    double fraction(double ms) const {
        const double clamped = std::clamp(ms, lo_ms, hi_ms);
        return std::log(clamped / lo_ms) / std::log(hi_ms / lo_ms);
    }
    double bin_edge(std::size_t index) const {
        return lo_ms * std::pow(hi_ms / lo_ms, static_cast<double>(index) / kIdleBins);
    }
};

IdleAxis idle_axis(const std::vector<const TraceAnalysis*>& traces, const PeerTimeout& peer) {
    std::vector<double> shown{peer.ms};
    for (const TraceAnalysis* trace : traces) {
        for (const IdleHistogram* closes :
             {&trace->local_idle, &trace->peer_idle, &trace->upstream_peer_idle}) {
            for (const std::optional<double> ms : {closes->min(), closes->max()}) {
                if (ms) shown.push_back(*ms);
            }
        }
        for (const std::optional<double> bound :
             {trace->longest_idle_at_local_close_ms, trace->longest_idle_at_peer_close_ms}) {
            if (bound) shown.push_back(*bound);
        }
    }
    double lo = kLongestIdleMs;
    double hi = kShortestIdleMs;
    for (const double ms : shown) {
        if (!std::isfinite(ms)) continue;
        lo = std::min(lo, std::clamp(ms, kShortestIdleMs, kLongestIdleMs));
        hi = std::max(hi, std::clamp(ms, kShortestIdleMs, kLongestIdleMs));
    }
    // A margin either side, and at least two decades, so that a cluster reads as one.
    IdleAxis axis{.lo_ms = std::max(lo / 2, kShortestIdleMs), .hi_ms = hi * 2};
    const double too_narrow = 100 / (axis.hi_ms / axis.lo_ms);
    if (too_narrow > 1) {
        axis.lo_ms = std::max(axis.lo_ms / std::sqrt(too_narrow), kShortestIdleMs);
        axis.hi_ms = axis.lo_ms * 100;
    }
    return axis;
}

// "100 ms", "2 s", "0.01 ms".
std::string tick_text(double ms) {
    return ms < 1000 ? fmt::format("{:g} ms", ms) : fmt::format("{:g} s", ms / 1000);
}

// 1-2-5 steps where the axis spans few decades, decades otherwise.
std::vector<double> idle_ticks(const IdleAxis& axis) {
    const bool few_decades = axis.hi_ms / axis.lo_ms < 1e4;
    std::vector<double> ticks;
    for (double decade = std::pow(10, std::floor(std::log10(axis.lo_ms))); decade <= axis.hi_ms;
         decade *= 10) {
        for (const double step : {1.0, 2.0, 5.0}) {
            if (step != 1 && !few_decades) continue;
            const double ms = decade * step;
            if (ms >= axis.lo_ms && ms <= axis.hi_ms) ticks.push_back(ms);
        }
    }
    return ticks;
}

struct IdlePanel {
    const char* side;
    const char* member;  // under "idle."
    const IdleHistogram* closes;
    std::optional<double> keeps_idle_longer_than_ms;
    const char* bar_color;
};

// Samples per bin: the first bin takes everything below it, the last everything above.
std::vector<uint64_t> idle_bins(const IdleHistogram& closes, const IdleAxis& axis) {
    std::vector<uint64_t> below(kIdleBins + 1);
    for (std::size_t edge = 1; edge < kIdleBins; ++edge)
        below[edge] = closes.count_below(axis.bin_edge(edge));
    below[kIdleBins] = closes.count();
    std::vector<uint64_t> bins(kIdleBins);
    for (std::size_t bin = 0; bin < kIdleBins; ++bin) bins[bin] = below[bin + 1] - below[bin];
    return bins;
}

// A vertical line across the panels with its label in its own row above them.
void idle_marker(std::string& out, double x, double label_y, double top, double bottom,
                 double right_edge, const char* css_class, const std::string& label_html) {
    out += fmt::format(
        "<line class=\"{}\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", css_class,
        x, top, x, bottom);
    // To the right of the line unless that runs off the chart (~7 units a bold char), then to
    // its left, as far as the chart's left edge allows.
    const double label_width = 7 * static_cast<double>(label_html.size());
    const bool fits_right = x + 4 + label_width <= right_edge;
    out += fmt::format(
        "<text class=\"label\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{}</text>\n",
        fits_right ? x + 4 : std::max(x - 4, label_width), label_y, fits_right ? "start" : "end",
        label_html);
}

void idle_histograms(std::string& out, const View& view, const TraceAnalysis& trace,
                     const PeerTimeout& peer_timeout, const IdleAxis& axis) {
    std::vector<IdlePanel> panels{
        {"this host", "this_host", &trace.local_idle, trace.longest_idle_at_peer_close_ms,
         verdict_color(Verdict::LocalIdleClose)},
        {"peer", "peer", &trace.peer_idle, trace.longest_idle_at_local_close_ms,
         verdict_color(Verdict::PeerIdleClose)}};
    if (trace.upstream_peer_idle.count() > 0) {
        panels.push_back({"upstream peer", "upstream_peer", &trace.upstream_peer_idle, std::nullopt,
                          verdict_color(Verdict::PeerIdleClose)});
    }
    constexpr double kLeft = 104, kRight = 16, kTop = 42, kPanelHeight = 92, kPanelGap = 12;
    const double width = view.chart_width;
    const double plot_width = width - kLeft - kRight;
    const double bottom = kTop + static_cast<double>(panels.size()) * (kPanelHeight + kPanelGap);
    const double height = bottom + 24;
    auto x_of = [&](double ms) { return kLeft + axis.fraction(ms) * plot_width; };

    out += fmt::format(
        "<svg class=\"idle-histogram\" viewBox=\"0 0 {:.0f} {:.0f}\" role=\"img\" "
        "aria-label=\"Idle time before the close, per side\">\n",
        width, height);
    for (const double tick : idle_ticks(axis)) {
        out += fmt::format(
            "<line class=\"grid\" x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\"/>"
            "<text class=\"small\" x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"middle\">{4}</text>\n",
            x_of(tick), kTop, bottom - kPanelGap, bottom + 6, tick_text(tick));
    }
    for (std::size_t index = 0; index < panels.size(); ++index) {
        const IdlePanel& panel = panels[index];
        const double top = kTop + static_cast<double>(index) * (kPanelHeight + kPanelGap);
        const double base = top + kPanelHeight;
        out += fmt::format(
            "<g class=\"idle-panel\" data-side=\"{}\">\n<rect class=\"panel\" x=\"{:.1f}\" "
            "y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\"/>\n",
            panel.member, kLeft, top, plot_width, kPanelHeight);
        out += fmt::format(
            "<text class=\"label\" x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"end\">{2}</text>"
            "<text class=\"small\" x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"end\">{4}</text>\n",
            kLeft - 8, top + 18, panel.side, top + 34,
            count_of(panel.closes->count(), "close", "closes"));
        if (panel.closes->count() == 0) {
            const std::string bound = panel.keeps_idle_longer_than_ms
                                          ? fmt::format("; keeps idle connections longer than {}",
                                                        duration(*panel.keeps_idle_longer_than_ms))
                                          : std::string();
            out += fmt::format(
                "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">never "
                "idle-closed{}</text>\n",
                kLeft + plot_width / 2, top + kPanelHeight / 2 + 4, bound);
            out += "</g>\n";
            continue;
        }
        const std::vector<uint64_t> bins = idle_bins(*panel.closes, axis);
        const uint64_t tallest = *std::ranges::max_element(bins);
        out +=
            fmt::format("<text class=\"small\" x=\"{:.1f}\" y=\"{:.1f}\">tallest bar: {}</text>\n",
                        kLeft + 4, top + 13, tallest);
        for (std::size_t bin = 0; bin < kIdleBins; ++bin) {
            if (bins[bin] == 0) continue;
            const double x0 = x_of(axis.bin_edge(bin));
            const double x1 = x_of(axis.bin_edge(bin + 1));
            const double bar_height =
                static_cast<double>(bins[bin]) / static_cast<double>(tallest) * (kPanelHeight - 20);
            out += fmt::format(
                "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\" "
                "data-count=\"{}\"><title>{} from {} to {}</title></rect>\n",
                x0 + 0.5, base - bar_height, std::max(x1 - x0 - 1, 1.0), bar_height,
                panel.bar_color, bins[bin], count_of(bins[bin], "idle close", "idle closes"),
                duration(axis.bin_edge(bin)), duration(axis.bin_edge(bin + 1)));
        }
        out += "</g>\n";
    }
    const double markers_bottom = bottom - kPanelGap;
    if (const std::optional<double> median = trace.local_idle.percentile(50)) {
        idle_marker(out, x_of(*median), 14, 20, markers_bottom, width - kRight, "marker-host",
                    fmt::format("this host closes after {} (median)", duration(*median)));
    }
    idle_marker(out, x_of(peer_timeout.ms), 32, 38, markers_bottom, width - kRight,
                peer_timeout.assumed() ? "marker-peer assumed" : "marker-peer",
                fmt::format("peer's idle timeout: {}",
                            escaped(analysis_text::peer_timeout_text(peer_timeout))));
    out += "</svg>\n";
}

void idle_table(std::string& out, const View& view, const TraceAnalysis& trace) {
    struct Row {
        const char* side;
        const char* member;
        IdleFigures figures;
    };
    std::vector<Row> rows{
        {"this host", "this_host",
         idle_figures(trace.local_idle, trace.longest_idle_at_peer_close_ms)},
        {"peer", "peer", idle_figures(trace.peer_idle, trace.longest_idle_at_local_close_ms)}};
    if (trace.upstream_peer_idle.count() > 0) {
        rows.push_back({"upstream peer", "upstream_peer",
                        idle_figures(trace.upstream_peer_idle, std::nullopt)});
    }
    out +=
        "<table class=\"idle-figures\"><tr><th>side</th><th class=\"num\">closes</th><th "
        "class=\"num\">min</th><th class=\"num\">p10</th><th class=\"num\">median</th><th "
        "class=\"num\">p90</th><th class=\"num\">max</th><th class=\"num\">kept idle longer "
        "than</th></tr>\n";
    for (const Row& row : rows) {
        const std::string idle = fmt::format("idle.{}.", row.member);
        out += fmt::format("<tr><td>{}</td><td class=\"num\"{}>{}</td>", row.side,
                           figure(view, idle + "closes"), row.figures.closes);
        const std::pair<const char*, std::optional<double>> columns[] = {
            {"min_ms", row.figures.min_ms},
            {"p10_ms", row.figures.p10_ms},
            {"median_ms", row.figures.median_ms},
            {"p90_ms", row.figures.p90_ms},
            {"max_ms", row.figures.max_ms},
            {"keeps_idle_longer_than_ms", row.figures.keeps_idle_longer_than_ms}};
        for (const auto& [member, ms] : columns) {
            out += fmt::format("<td class=\"num\"{}>{}</td>", figure_ms(view, idle + member, ms),
                               ms ? duration(*ms) : "-");
        }
        out += "</tr>\n";
    }
    out += "</table>\n";
}

void idle_section(std::string& out, const View& view, const TraceAnalysis& trace,
                  const Assessment& a, const IdleAxis& axis) {
    out +=
        fmt::format("<section class=\"idle\">\n<{0}>Idle before the close</{0}>\n", view.heading);
    out +=
        "<p class=\"note\">Connections this host accepted or found open; the peers of "
        "connections this host opened as upstream peer. The axis is logarithmic.</p>\n";
    idle_histograms(out, view, trace, a.peer_timeout, axis);
    idle_table(out, view, trace);
    out += fmt::format(
        "<p>Held against the peer's idle timeout of <span{}>{}</span>: <span{}>{}</span> by this "
        "host sooner.</p>\n",
        figure_ms(view, "peer_idle_timeout.ms", a.peer_timeout.ms),
        escaped(analysis_text::peer_timeout_text(a.peer_timeout)),
        figure(view, "early_idle_closes"), a.early_idle_closes,
        a.early_idle_closes == 1 ? "idle close" : "idle closes");
    for (const auto& [comm, announced] : trace.announced_keepalive_by_comm) {
        out += fmt::format("<p>{} in its responses (the shortest, on {}).</p>\n",
                           escaped(analysis_text::announced_text(comm, announced)),
                           count_of(announced.connections, "connection", "connections"));
    }
    out += "</section>\n";
}

// ---------------------------------------------------------------------------------------------
// Verdicts over time: stacked bars per bucket, all connections and the caught ones apart (a
// handful of races would not show among a million idle closes)

// The connections of each verdict, which is also the chart's legend.
void verdict_legend(std::string& out, const View& view, const TraceAnalysis& trace) {
    out += "<ul class=\"verdicts\">\n";
    for (const Verdict verdict : kAllVerdicts) {
        out += fmt::format(
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{} <b{}>{}</b></li>\n",
            verdict_color(verdict), to_string(verdict),
            figure(view, fmt::format("verdicts.{}.connections", to_string(verdict))),
            trace.verdicts[verdict]);
    }
    out += "</ul>\n";
}

// One stacked bar per bucket of `verdicts`; `counted` marks the panel whose bars carry their
// counts (data-count), which add up to the verdict table.
void over_time_panel(std::string& out, const TraceAnalysis& trace,
                     std::span<const Verdict> verdicts, bool counted, double left, double top,
                     double bar_width, double height) {
    const std::vector<VerdictCounts>& buckets = trace.verdicts_over_time.buckets();
    uint64_t tallest = 0;
    for (const VerdictCounts& bucket : buckets) {
        uint64_t total = 0;
        for (const Verdict verdict : verdicts) total += bucket[verdict];
        tallest = std::max(tallest, total);
    }
    if (tallest == 0) {
        out += fmt::format(
            "<text x=\"{:.1f}\" y=\"{:.1f}\">no close race, in-flight reset or request the peer "
            "gave up on</text>\n",
            left + 8, top + height / 2 + 4);
        return;
    }
    out += fmt::format(
        "<text class=\"small\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", left - 6,
        top + 10, tallest);
    const VerdictTimeline& timeline = trace.verdicts_over_time;
    for (std::size_t index = 0; index < buckets.size(); ++index) {
        const VerdictCounts& bucket = buckets[index];
        std::string parts;
        for (const Verdict verdict : verdicts) {
            if (bucket[verdict] > 0)
                parts += fmt::format(", {} {}", bucket[verdict], to_string(verdict));
        }
        if (parts.empty()) continue;
        const int64_t start_wall =
            static_cast<int64_t>(timeline.origin_ns() + index * timeline.bucket_ns()) +
            trace.header.mono_to_wall_ns;
        out += fmt::format("<g><title>{} UTC{}</title>", time_of_day_utc(start_wall), parts);
        double y = top + height;
        for (const Verdict verdict : verdicts) {
            if (bucket[verdict] == 0) continue;
            const double bar_height =
                static_cast<double>(bucket[verdict]) / static_cast<double>(tallest) * (height - 4);
            y -= bar_height;
            out += fmt::format(
                "<rect x=\"{:.1f}\" y=\"{:.2f}\" width=\"{:.1f}\" height=\"{:.2f}\" fill=\"{}\"",
                left + static_cast<double>(index) * bar_width + 0.5, y,
                std::max(bar_width - 1, 0.5), bar_height, verdict_color(verdict));
            if (counted) {
                out += fmt::format(" data-verdict=\"{}\" data-count=\"{}\"", to_string(verdict),
                                   bucket[verdict]);
            }
            out += "/>";
        }
        out += "</g>\n";
    }
}

void over_time_section(std::string& out, const View& view, const TraceAnalysis& trace) {
    const VerdictTimeline& timeline = trace.verdicts_over_time;
    out +=
        fmt::format("<section class=\"over-time\">\n<{0}>Verdicts over time</{0}>\n", view.heading);
    verdict_legend(out, view, trace);
    if (timeline.buckets().empty()) {
        out += "<p>No connections.</p>\n</section>\n";
        return;
    }
    constexpr double kLeft = 56, kRight = 16, kAllHeight = 130, kCaughtHeight = 80, kGap = 26;
    const double width = view.chart_width;
    const double plot_width = width - kLeft - kRight;
    const std::size_t bucket_count = timeline.buckets().size();
    const double bar_width = plot_width / static_cast<double>(bucket_count);
    const double caught_top = 18 + kAllHeight + kGap;
    const double axis_y = caught_top + kCaughtHeight;
    out += fmt::format(
        "<p class=\"note\">Each connection at its first FIN or RST; each bar is {} (times UTC, "
        "hover a bar for its counts).</p>\n",
        duration(static_cast<double>(timeline.bucket_ns()) / 1e6));
    out += fmt::format(
        "<svg class=\"verdicts-over-time\" viewBox=\"0 0 {:.0f} {:.0f}\" role=\"img\" "
        "aria-label=\"Verdicts over time\">\n",
        width, axis_y + 24);
    out += fmt::format(
        "<text class=\"label\" x=\"{0:.1f}\" y=\"12\">all connections</text>"
        "<rect class=\"panel\" x=\"{0:.1f}\" y=\"18\" width=\"{1:.1f}\" height=\"{2:.1f}\"/>\n"
        "<text class=\"label\" x=\"{0:.1f}\" y=\"{3:.1f}\">caught a request: races, in-flight "
        "resets, requests the peer gave up on</text>"
        "<rect class=\"panel\" x=\"{0:.1f}\" y=\"{4:.1f}\" width=\"{1:.1f}\" "
        "height=\"{5:.1f}\"/>\n",
        kLeft, plot_width, kAllHeight, caught_top - 6, caught_top, kCaughtHeight);
    over_time_panel(out, trace, kAllVerdicts, true, kLeft, 18, bar_width, kAllHeight);
    over_time_panel(out, trace, kCaughtVerdicts, false, kLeft, caught_top, bar_width,
                    kCaughtHeight);
    // Time labels on bucket boundaries, ~130 units apart so that they never overlap.
    const auto labels = std::max<std::size_t>(2, static_cast<std::size_t>(plot_width / 130));
    const std::size_t step = std::max<std::size_t>(1, (bucket_count + labels - 1) / labels);
    for (std::size_t index = 0; index <= bucket_count; index += step) {
        const double x = kLeft + static_cast<double>(index) * bar_width;
        const int64_t wall =
            static_cast<int64_t>(timeline.origin_ns() + index * timeline.bucket_ns()) +
            trace.header.mono_to_wall_ns;
        out += fmt::format(
            "<line class=\"axis\" x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\"/>"
            "<text class=\"small\" x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"{4}\">{5}</text>\n",
            x, axis_y, axis_y + 5, axis_y + 17,
            index == 0              ? "start"
            : index == bucket_count ? "end"
                                    : "middle",
            time_of_day_utc(wall));
    }
    out += "</svg>\n</section>\n";
}

// ---------------------------------------------------------------------------------------------
// A timeline per listed race: the last exchange, the close, the late request, the resets

struct TimelineEvent {
    uint64_t ns = 0;
    const char* name = "";
    std::string detail{};  // trace bytes, made printable and escaped when drawn
    bool closes = false;   // a GOAWAY, FIN or RST
    bool late = false;     // the caught request or stream
};

std::vector<TimelineEvent> timeline_events(const CaughtConnection& caught) {
    std::vector<TimelineEvent> events;
    if (const std::optional<Request>& last = caught.last_answered) {
        events.push_back(
            {.ns = last->request_ns, .name = "last request", .detail = request_line(*last)});
        if (last->response_ns) {
            events.push_back({.ns = *last->response_ns,
                              .name = "response",
                              .detail = last->status ? std::to_string(*last->status) : ""});
        }
    }
    // Pushed in the order they go where times tie (sorted stably below): a late request "in the
    // same instant" as the FIN came after it. An HTTP/2 connection's close begins with a GOAWAY.
    if (caught.local_goaway_ns) {
        events.push_back(
            {.ns = *caught.local_goaway_ns, .name = "GOAWAY (this host)", .closes = true});
    }
    if (caught.peer_goaway_ns)
        events.push_back({.ns = *caught.peer_goaway_ns, .name = "GOAWAY (peer)", .closes = true});
    if (caught.local_fin_ns)
        events.push_back({.ns = *caught.local_fin_ns, .name = "FIN (this host)", .closes = true});
    if (caught.peer_fin_ns)
        events.push_back({.ns = *caught.peer_fin_ns, .name = "FIN (peer)", .closes = true});
    if (caught.request) {
        events.push_back({.ns = caught.request->request_ns,
                          .name = caught.verdict == Verdict::PeerCloseRace ? "late request (sent)"
                                                                           : "late request",
                          .detail = request_line(*caught.request),
                          .late = true});
    } else if (!caught.streams.empty()) {
        const Http2Stream& first = caught.streams.front();
        if (const std::optional<uint64_t> ns = first.opened_ns ? first.opened_ns : first.reset_ns) {
            events.push_back({.ns = *ns,
                              .name = caught.verdict == Verdict::PeerCloseRace
                                          ? "late stream (sent)"
                                          : "late stream",
                              .detail = "stream " + stream_name(first),
                              .late = true});
        }
    }
    if (caught.local_rst_ns) {
        events.push_back({.ns = *caught.local_rst_ns,
                          .name = "RST (this host)",
                          .detail = caught.rst_reason.value_or(""),
                          .closes = true});
    }
    if (caught.peer_rst_ns) {
        events.push_back({.ns = *caught.peer_rst_ns, .name = "RST (peer)", .closes = true});
    }
    std::ranges::stable_sort(events, {}, &TimelineEvent::ns);
    return events;
}

void timeline_svg(std::string& out, const View& view, const std::vector<TimelineEvent>& events) {
    constexpr double kMargin = 56, kLineY = 46, kHeight = 92;
    const double width = view.chart_width;
    const double spacing =
        events.size() > 1 ? (width - 2 * kMargin) / static_cast<double>(events.size() - 1) : 0;
    auto x_of = [&](std::size_t index) {
        return events.size() > 1 ? kMargin + static_cast<double>(index) * spacing : width / 2;
    };
    // Labels alternate between two rows, so each row has twice the spacing (~6.5 units a char);
    // the first and last reach inwards from their event, to stay inside the chart.
    const auto label_chars = static_cast<std::size_t>(std::max(2 * spacing / 6.5, 12.0));
    const auto edge_label_chars = static_cast<std::size_t>(std::max(1.5 * spacing / 6.5, 12.0));
    out += fmt::format("<svg class=\"timeline\" viewBox=\"0 0 {:.0f} {:.0f}\" role=\"img\">\n",
                       width, kHeight);
    const auto first_close = std::ranges::find_if(events, &TimelineEvent::closes);
    for (std::size_t index = 0; index + 1 < events.size(); ++index) {
        const TimelineEvent& from = events[index];
        const TimelineEvent& to = events[index + 1];
        const bool idle = first_close != events.end() && &to == &*first_close && !from.closes;
        const bool window = to.late;
        const char* css = window ? "gap window" : idle ? "gap idle" : "gap";
        const double gap_ms = static_cast<double>(to.ns - from.ns) / 1e6;
        const double x0 = x_of(index);
        const double x1 = x_of(index + 1);
        out += fmt::format(
            "<line class=\"{}\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>"
            "<text class=\"gap-label{}\" x=\"{:.1f}\" y=\"{:.1f}\" "
            "text-anchor=\"middle\">{}{}</text>\n",
            css, x0, kLineY, x1, kLineY, window ? " window" : "", (x0 + x1) / 2, kLineY - 6,
            idle ? "idle " : "+", gap_text(gap_ms));
    }
    for (std::size_t index = 0; index < events.size(); ++index) {
        const TimelineEvent& event = events[index];
        const double x = x_of(index);
        const bool upper_row = index % 2 == 0;
        const bool first = index == 0 && events.size() > 1;
        const bool last = index + 1 == events.size() && events.size() > 1;
        const char* anchor = first ? "start" : last ? "end" : "middle";
        const double label_x = first ? x - 10 : last ? x + 10 : x;
        const char* color = event.late     ? verdict_color(Verdict::LocalCloseRace)
                            : event.closes ? "#333"
                                           : verdict_color(Verdict::LocalIdleClose);
        out += fmt::format(
            "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{}\" fill=\"{}\"/>"
            "<text class=\"label\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{}</text>",
            x, kLineY, event.late ? 7 : 5, color, label_x, upper_row ? 12.0 : 26.0, anchor,
            event.name);
        if (!event.detail.empty()) {
            out += fmt::format(
                "<text class=\"small\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{}"
                "<title>{}</title></text>",
                label_x, upper_row ? 68.0 : 84.0, anchor,
                shortened(event.detail, first || last ? edge_label_chars : label_chars),
                text(event.detail));
        }
        out += "\n";
    }
    out += "</svg>\n";
}

void races_section(std::string& out, const View& view, const TraceAnalysis& trace) {
    const CaughtList& races = trace.races;
    out += fmt::format("<section class=\"races\">\n<{0}>Close races (<span{1}>{2}</span>)</{0}>\n",
                       view.heading, figure(view, "races.total"), races.total);
    if (races.total == 0) {
        out += "<p>None.</p>\n</section>\n";
        return;
    }
    out +=
        "<p class=\"note\">Events are evenly spaced, not to scale: each gap is labelled. The "
        "red gap is the race: how late the request came after the close.</p>\n";
    for (std::size_t index = 0; index < races.listed.size(); ++index) {
        const CaughtConnection& caught = races.listed[index];
        const std::string member = fmt::format("races.listed.{}.", index);
        const bool upstream = caught.verdict == Verdict::PeerCloseRace;
        const std::string after =
            caught.request_after_close_ms
                ? fmt::format("<span{}>+{}</span> after {} closed",
                              figure_ms(view, member + "request_after_close_ms",
                                        caught.request_after_close_ms),
                              gap_text(*caught.request_after_close_ms),
                              upstream ? "the peer" : "this host")
                : std::string("after the close");
        out += fmt::format(
            "<figure class=\"timeline\">\n<figcaption><b>#{}</b> <time>{}</time> "
            "<code class=\"request\">{}</code> {} {} ({}) {} {}; idle {} before the close; "
            "close: {}{}; connection <span{}>{}</span></figcaption>\n",
            index + 1, iso8601_utc(caught.wall_ns),
            caught_request_text(caught, trace.host_count() > 1),
            upstream ? "sent by this host to" : "from", text(endpoint_text(caught.remote)),
            text(caught.comm.value_or("process unknown")), upstream ? "went out" : "arrived", after,
            caught.idle_ms ? duration(*caught.idle_ms) : "unknown", close_text(caught),
            upstream ? " [upstream: peer_close_race]" : "", figure(view, member + "conn_id"),
            caught.conn_id);
        timeline_svg(out, view, timeline_events(caught));
        out += "</figure>\n";
    }
    if (races.total > races.listed.size()) {
        out += fmt::format("<p>... and {} more (the first {} are shown).</p>\n",
                           races.total - races.listed.size(), races.listed.size());
    }
    out += "</section>\n";
}

// In-flight resets and requests the peer gave up on: a table, as in the text report.
void caught_section(std::string& out, const View& view, const char* title, const char* member,
                    bool name_hosts,
                    const CaughtList& list) {
    out +=
        fmt::format("<section class=\"caught\">\n<{0}>{1} (<span{2}>{3}</span>)</{0}>\n",
                    view.heading, title, figure(view, fmt::format("{}.total", member)), list.total);
    if (list.total == 0) {
        out += "<p>None.</p>\n</section>\n";
        return;
    }
    out +=
        "<table><tr><th>request time (UTC)</th><th>peer</th><th class=\"num\">idle</th><th "
        "class=\"num\">waited</th><th>comm</th><th>close</th><th>request</th></tr>\n";
    for (const CaughtConnection& caught : list.listed) {
        out += fmt::format(
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>"
            "<td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            iso8601_utc(caught.wall_ns), text(endpoint_text(caught.remote)),
            caught.idle_ms ? duration(*caught.idle_ms) : "-",
            caught.request_after_close_ms ? duration(-*caught.request_after_close_ms) : "-",
            text(caught.comm.value_or("?")), close_text(caught),
            caught_request_text(caught, name_hosts));
    }
    out += "</table>\n";
    if (list.total > list.listed.size()) {
        out += fmt::format("<p>... and {} more (the first {} are listed).</p>\n",
                           list.total - list.listed.size(), list.listed.size());
    }
    out += "</section>\n";
}

// Several traces merged: which files were read, and the figures of each host.
void hosts_section(std::string& out, const View& view, const TraceAnalysis& trace) {
    out += fmt::format("<section class=\"hosts\">\n<{0}>By host</{0}>\n<p>Traces read:",
                       view.heading);
    for (std::size_t index = 0; index < trace.sources.size(); ++index) {
        const TraceSource& source = trace.sources[index];
        out += fmt::format("{} <code>{}</code> ({}{})", index == 0 ? "" : ",", text(source.file),
                           text(source.host), source.complete ? "" : ", cut short");
    }
    out +=
        ".</p>\n<table><tr><th>host</th><th class=\"num\">connections</th><th "
        "class=\"num\">requests</th><th class=\"num\">local idle</th><th class=\"num\">peer "
        "idle</th><th class=\"num\">races</th><th class=\"num\">in-flight</th><th "
        "class=\"num\">gave up</th><th class=\"num\">idle timer</th></tr>\n";
    for (const auto& [host, figures] : trace.by_host) {
        const VerdictCounts& v = figures.verdicts;
        const std::optional<double> timer_ms = trace.host_idle_timer_ms(host);
        out += fmt::format(
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td "
            "class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td "
            "class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            text(host), figures.connections, figures.requests, figures.local_idle_timer_closes,
            figures.peer_idle_timer_closes, v[Verdict::LocalCloseRace] + v[Verdict::PeerCloseRace],
            v[Verdict::LocalResetInflight], v[Verdict::PeerCloseInflight],
            timer_ms ? duration(*timer_ms) : "-");
    }
    out += "</table>\n</section>\n";
}

// ---------------------------------------------------------------------------------------------
// A recording: everything the page shows of one trace

void recording(std::string& out, const View& view, const TraceAnalysis& trace, const Assessment& a,
               const IdleAxis& axis) {
    const std::string lost =
        trace.summary ? fmt::format("<span{}>{}</span> lost events",
                                    figure(view, "trace.lost_events"), trace.lost_events())
                      : fmt::format(
                            "lost events <span{} data-value=\"null\">unknown</span> (no "
                            "summary)",
                            figure(view, "trace.lost_events"));
    const uint64_t same_host = trace.same_host_connections();
    const std::string same_host_text =
        same_host > 0 ? fmt::format(" (<span{}>{}</span> with both ends on this host, each "
                                    "counted once)",
                                    figure(view, "trace.same_host_connections"), same_host)
                      : std::string();
    out += fmt::format(
        "<p class=\"meta\"><code>{}</code>: {} <b>{}</b>, kernel {}, recorded from {} for "
        "<span{}>{:.1f} s</span>: <span{}>{}</span> connections{}, <span{}>{}</span> requests, "
        "{}.</p>\n",
        text(trace.file), trace.host_count() > 1 ? "hosts" : "host", text(trace.header.host),
        text(trace.header.kernel),
        text(trace.header.start_wall),
        figure(view, "trace.duration_s") +
            fmt::format(" data-value=\"{:.3f}\"", trace.duration_s()),
        trace.duration_s(), figure(view, "trace.connections"), trace.connections, same_host_text,
        figure(view, "trace.requests"), trace.requests, lost);
    if (!trace.warnings.empty()) {
        out += "<ul class=\"warnings\">\n";
        for (const std::string& warning : trace.warnings)
            out += fmt::format("<li>warning: {}</li>\n", text(warning));
        out += "</ul>\n";
    }
    out += fmt::format("<p class=\"conclusion\"{}>{}</p>\n", figure(view, "conclusion"),
                       text(a.conclusion));
    out += "<ol class=\"recommendations\">\n";
    for (std::size_t index = 0; index < a.recommendations.size(); ++index) {
        out += fmt::format("<li{}>{}</li>\n",
                           figure(view, fmt::format("recommendations.{}.text", index)),
                           text(a.recommendations[index].text));
    }
    out += "</ol>\n";
    if (!trace.sources.empty()) hosts_section(out, view, trace);
    idle_section(out, view, trace, a, axis);
    over_time_section(out, view, trace);
    races_section(out, view, trace);
    const bool names_hosts = trace.host_count() > 1;
    caught_section(out, view, "In-flight resets", "inflight_resets", names_hosts,
                   trace.inflight_resets);
    caught_section(out, view, "Requests the peer gave up on", "peer_gave_up", names_hosts,
                   trace.peer_gave_up);
}

}  // namespace

std::string render_report_html(const TraceAnalysis& trace, const Assessment& assessment) {
    std::string out;
    open_page(out, "closetrace report: " + text(trace.file),
              assessment.closes_before_peer ? "report closes-first" : "report");
    out += "<h1>closetrace report</h1>\n";
    recording(out, View{.json_prefix = "", .chart_width = kReportChartWidth, .heading = "h2"},
              trace, assessment, idle_axis({&trace}, assessment.peer_timeout));
    close_page(out, trace);
    return out;
}

std::string render_diff_html(const TraceAnalysis& before, const TraceAnalysis& after,
                             const DiffResult& result) {
    std::string out;
    open_page(out, fmt::format("closetrace diff: {} to {}", text(before.file), text(after.file)),
              "diff");
    const std::string outcome = to_string(result.conclusion);
    std::string outcome_class = outcome;
    std::ranges::replace(outcome_class, ' ', '-');
    out += fmt::format(
        "<h1>closetrace diff</h1>\n<p class=\"meta\"><code>{}</code> (before) and "
        "<code>{}</code> (after), held against the peer's idle timeout of <span{}>{}</span>.</p>\n"
        "<p class=\"conclusion\"><span class=\"outcome {}\" data-json=\"conclusion\">{}</span>. "
        "<span data-json=\"explanation\">{}</span></p>\n",
        text(before.file), text(after.file),
        figure_ms(View{}, "peer_idle_timeout.ms", result.peer_timeout.ms),
        escaped(analysis_text::peer_timeout_text(result.peer_timeout)), outcome_class, outcome,
        text(result.explanation));
    const IdleAxis axis = idle_axis({&before, &after}, result.peer_timeout);
    out += "<div class=\"side-by-side\">\n";
    const std::tuple<const char*, const char*, const TraceAnalysis*, const Assessment*> sides[] = {
        {"Before", "before.", &before, &result.before}, {"After", "after.", &after, &result.after}};
    for (const auto& [title, prefix, trace, assessment] : sides) {
        out += fmt::format("<div class=\"recording {}\">\n<h2>{}: <code>{}</code></h2>\n",
                           assessment->closes_before_peer ? "closes-first" : "", title,
                           text(trace->file));
        recording(out, View{.json_prefix = prefix, .chart_width = kDiffChartWidth, .heading = "h3"},
                  *trace, *assessment, axis);
        out += "</div>\n";
    }
    out += "</div>\n";
    close_page(out, after);
    return out;
}

}  // namespace closetrace
