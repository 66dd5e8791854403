//! The demo's report: one HTML file a plant engineer opens after a run to see, per line, how
//! the anomaly scores moved, when the model stopped being right, which retraining jobs ran on
//! the GPU pool and when the new model reached each device.
//!
//! Invariants this module keeps:
//! - The file is self-contained: inline CSS and inline SVG drawn here, no script, no font,
//!   stylesheet or image from elsewhere. It opens offline, on a plant PC, and prints.
//! - Every string that comes from [`ReportData`] goes through [`escape`] before it is put into
//!   HTML or SVG; device names, versions and timeline texts are data, never markup.
//! - Rendering reads no clock and iterates no hash map: the same data gives the same bytes, so
//!   two reports of one run compare with `diff`.
//! - A device's score series is cut to at most [`MAX_POINTS`] points by time bucket, keeping
//!   each bucket's highest score and its anomaly flag: an hour-long run stays a few MB and no
//!   spike or flag disappears from the plot.
//! - Colours mean the same thing everywhere: a device has one colour on its line's plots, a
//!   model version one colour on every plot and every line, a marker kind one colour in the
//!   plots and in the timeline's badges.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

use serde::Serialize;

/// Most points drawn per device score series.
pub const MAX_POINTS: usize = 1500;

/// Everything the report shows, filled by the demo at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ReportData {
    pub title: String,
    /// When the report was made, RFC 3339.
    pub generated: String,
    pub duration_s: f64,
    pub lines: Vec<LineReport>,
    pub pool: PoolReport,
    /// All lines, in time order.
    pub timeline: Vec<TimelineEntry>,
    /// Key facts (rows in lake, devices, ...), shown as a small table at the top.
    pub summary_rows: Vec<(String, String)>,
}

/// One production line.
#[derive(Debug, Clone, Serialize)]
pub struct LineReport {
    pub line: String,
    pub scenario: String,
    pub devices: Vec<DeviceSeries>,
    /// F1 of the running models over time, in buckets (None when undefined in a bucket).
    pub f1: Vec<(f64, Option<f64>)>,
    /// E.g. "before the change", "after the change", "after the rollout".
    pub phases: Vec<PhaseScore>,
    /// Vertical lines on this line's plots.
    pub markers: Vec<Marker>,
}

/// One device's scores and models.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSeries {
    pub device: String,
    /// (t_s, score, anomaly flag) per scored window.
    pub scores: Vec<(f64, f32, bool)>,
    /// Which model version ran from when: (t_from_s, t_to_s, version).
    pub versions: Vec<(f64, f64, String)>,
    /// Thresholds of the versions, when known.
    pub thresholds: Vec<(String, f32)>,
    /// Windows that were truly faulty (ground truth): (t_from_s, t_to_s) spans, shaded.
    pub faulty: Vec<(f64, f64)>,
}

/// The model's score over one phase of a line's run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseScore {
    pub name: String,
    pub from_s: f64,
    pub to_s: f64,
    pub windows: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

/// An event drawn as a labelled vertical line.
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    pub t_s: f64,
    pub label: String,
    /// "change", "drift", "job", "promoted", "canary", "rollout", "rollback", "alert".
    pub kind: String,
}

/// The training GPU pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    pub capacity: u32,
    pub backend: String,
    pub jobs: Vec<PoolJob>,
}

/// One training job on the pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolJob {
    pub job: String,
    pub line: String,
    pub gpus: Vec<u32>,
    pub queued_s: f64,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub outcome: String,
}

/// One row of the timeline table.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub t_s: f64,
    pub line: String,
    pub kind: String,
    pub text: String,
}

/// Renders the whole report as one HTML document.
pub fn render(data: &ReportData) -> String {
    let ctx = Ctx::new(data);
    let mut html = String::with_capacity(64 * 1024);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    html.push_str(&format!("<title>{}</title>\n", escape(&data.title)));
    html.push_str(&format!("<style>{CSS}</style>\n</head>\n<body>\n"));
    html.push_str(&format!(
        "<header><h1>{}</h1><p class=\"meta\">Generated {} · run of {}</p></header>\n",
        escape(&data.title),
        escape(&data.generated),
        duration_text(data.duration_s)
    ));
    html.push_str(&headline(data));
    if !data.summary_rows.is_empty() {
        html.push_str("<section class=\"facts\"><h2>Facts</h2><table class=\"kv\">\n");
        for (key, value) in &data.summary_rows {
            html.push_str(&format!(
                "<tr><th>{}</th><td>{}</td></tr>\n",
                escape(key),
                escape(value)
            ));
        }
        html.push_str("</table></section>\n");
    }
    for line in &data.lines {
        html.push_str(&format!(
            "<section class=\"line\"><h2>{} <span class=\"scenario\">{}</span></h2>\n",
            escape(&line.line),
            escape(&line.scenario)
        ));
        html.push_str("<h3>Anomaly score per device</h3>\n");
        if line.devices.is_empty() {
            html.push_str("<p class=\"empty\">No device of this line reported scores.</p>\n");
        } else {
            html.push_str(&score_plot(line, &ctx));
        }
        html.push_str("<h3>F1 of the running models</h3>\n");
        html.push_str(&f1_plot(line, &ctx));
        html.push_str(&phase_table(line));
        html.push_str("</section>\n");
    }
    html.push_str("<section><h2>Model versions per device</h2>\n");
    html.push_str(&swimlanes(data, &ctx));
    html.push_str("</section>\n");
    html.push_str(&format!(
        "<section><h2>GPU pool <span class=\"scenario\">{} · {} GPU(s)</span></h2>\n",
        escape(&data.pool.backend),
        data.pool.capacity
    ));
    html.push_str(&pool_plot(&data.pool, &ctx));
    html.push_str("</section>\n");
    html.push_str(&timeline_table(data));
    html.push_str("</body>\n</html>\n");
    html
}

/// Writes the report to `path` through a temporary file beside it and a rename, so a reader
/// never sees half a report.
pub fn write(data: &ReportData, path: &Path) -> io::Result<()> {
    let html = render(data);
    let Some(file_name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("report path {} names no file", path.display()),
        ));
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(html.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("writing report {}: {e}", path.display())))
}

/// Escapes text for HTML content and attribute values (SVG inline in HTML included).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Cuts `scores` to at most `max_points` points: the time span is split into `max_points`
/// equal buckets and each non-empty bucket keeps its highest-scoring window, flagged when any
/// window in the bucket was flagged. Series already short enough come back unchanged.
fn downsample(scores: &[(f64, f32, bool)], max_points: usize) -> Vec<(f64, f32, bool)> {
    if scores.len() <= max_points || max_points == 0 {
        return scores.to_vec();
    }
    let finite = scores.iter().filter(|p| p.0.is_finite());
    let (t0, t1) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    if t1 <= t0 {
        return scores.iter().take(max_points).copied().collect();
    }
    let mut buckets: Vec<Option<(f64, f32, bool)>> = vec![None; max_points];
    for &(t, score, flag) in scores {
        if !t.is_finite() {
            continue;
        }
        let i = (((t - t0) / (t1 - t0)) * max_points as f64) as usize;
        let slot = &mut buckets[i.min(max_points - 1)];
        *slot = Some(match *slot {
            None => (t, score, flag),
            Some((bt, bs, bf)) => {
                if score > bs || bs.is_nan() {
                    (t, score, bf || flag)
                } else {
                    (bt, bs, bf || flag)
                }
            }
        });
    }
    buckets.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// Colours and formatting.

/// Device colours: dark, saturated, told apart from the version colours below.
const DEVICE_COLOURS: [&str; 8] = [
    "#1f4e9c", "#7b2d8e", "#8c4a1c", "#1b6e3a", "#a0306a", "#3f5a66", "#5a4fcf", "#6b6b1f",
];
/// Model version colours (Okabe–Ito, readable by colour-blind viewers, black text on top).
const VERSION_COLOURS: [&str; 8] = [
    "#56b4e9", "#e69f00", "#009e73", "#f0e442", "#cc79a7", "#d55e00", "#0072b2", "#999999",
];
const FLAG_COLOUR: &str = "#d62728";
const FAULTY_FILL: &str = "#fbd5d5";

fn device_colour(index: usize) -> &'static str {
    DEVICE_COLOURS[index % DEVICE_COLOURS.len()]
}

/// Colour of a marker kind, also used for the timeline's badges.
fn kind_colour(kind: &str) -> &'static str {
    match kind {
        "change" => "#e65100",
        "drift" => "#8e24aa",
        "job" => "#546e7a",
        "promoted" => "#2e7d32",
        "canary" => "#00838f",
        "rollout" => "#1565c0",
        "rollback" => "#c62828",
        "alert" => "#ad1457",
        _ => "#455a64",
    }
}

fn outcome_colour(outcome: &str) -> &'static str {
    let o = outcome.to_ascii_lowercase();
    if ["succe", "promot", "done", "complet", "ok"]
        .iter()
        .any(|k| o.contains(k))
    {
        "#2e7d32"
    } else if o.contains("fail") || o.contains("error") {
        "#c62828"
    } else if o.contains("time") {
        "#ef6c00"
    } else if o.contains("reject") {
        "#6a1b9a"
    } else if o.contains("cancel") {
        "#757575"
    } else if o.contains("run") || o.contains("queue") || o.contains("pend") {
        "#1565c0"
    } else {
        "#455a64"
    }
}

fn f1_class(f1: Option<f64>) -> &'static str {
    match f1 {
        Some(v) if v >= 0.9 => "good",
        Some(v) if v >= 0.7 => "fair",
        Some(_) => "poor",
        None => "none",
    }
}

fn ratio(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_owned(),
    }
}

/// A time since the start of the run as `m:ss` (or `h:mm:ss`).
fn clock(t: f64) -> String {
    let s = if t.is_finite() {
        t.max(0.0).round() as u64
    } else {
        0
    };
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn duration_text(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "unknown length".to_owned();
    }
    if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!(
            "{} min {:02} s",
            (s / 60.0).floor(),
            (s % 60.0).round() as u64 % 60
        )
    }
}

/// Coordinates with one decimal: enough at the sizes drawn, and half the bytes of full floats.
fn n(v: f64) -> String {
    format!("{v:.1}")
}

// ---------------------------------------------------------------------------------------------
// Plotting helpers.

const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
/// Rough width of one character of the 11 px SVG text, to decide whether a label fits.
const CHAR_W: f64 = 6.3;
const LABEL_ROW: f64 = 14.0;

/// What every plot of one report shares: the time axis and the version colours.
struct Ctx {
    t_max: f64,
    versions: BTreeMap<String, &'static str>,
}

impl Ctx {
    fn new(data: &ReportData) -> Self {
        let mut t_max = if data.duration_s.is_finite() {
            data.duration_s
        } else {
            0.0
        };
        let mut first_seen: Vec<(f64, usize, String)> = Vec::new();
        let mut order = 0;
        for line in &data.lines {
            for device in &line.devices {
                for (from, to, version) in &device.versions {
                    t_max = t_max.max(finite_or(*to, 0.0));
                    first_seen.push((finite_or(*from, 0.0), order, version.clone()));
                    order += 1;
                }
                if let Some(last) = device.scores.last() {
                    t_max = t_max.max(finite_or(last.0, 0.0));
                }
            }
        }
        for entry in &data.timeline {
            t_max = t_max.max(finite_or(entry.t_s, 0.0));
        }
        for job in &data.pool.jobs {
            for t in [Some(job.queued_s), job.start_s, job.end_s]
                .into_iter()
                .flatten()
            {
                t_max = t_max.max(finite_or(t, 0.0));
            }
        }
        first_seen.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut versions = BTreeMap::new();
        for (_, _, version) in first_seen {
            let next = versions.len();
            versions
                .entry(version)
                .or_insert(VERSION_COLOURS[next % VERSION_COLOURS.len()]);
        }
        Ctx {
            t_max: if t_max > 0.0 { t_max } else { 1.0 },
            versions,
        }
    }

    fn version_colour(&self, version: &str) -> &'static str {
        self.versions.get(version).copied().unwrap_or("#bbbbbb")
    }

    fn x(&self, left: f64) -> Scale {
        Scale::linear(0.0, self.t_max, left, WIDTH - RIGHT)
    }
}

fn finite_or(v: f64, fallback: f64) -> f64 {
    if v.is_finite() { v } else { fallback }
}

/// A map from data to pixels, linear or log10; values outside the domain are clipped to its
/// edge so a spike never draws outside its panel.
#[derive(Debug, Clone, Copy)]
struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
    log: bool,
}

impl Scale {
    fn linear(d0: f64, d1: f64, r0: f64, r1: f64) -> Self {
        let d1 = if d1 > d0 { d1 } else { d0 + 1.0 };
        Scale {
            d0,
            d1,
            r0,
            r1,
            log: false,
        }
    }

    /// A log scale over `[d0, d1]`, both positive.
    fn log(d0: f64, d1: f64, r0: f64, r1: f64) -> Self {
        let d0 = if d0 > 0.0 { d0 } else { 1e-6 };
        let d1 = if d1 > d0 { d1 } else { d0 * 10.0 };
        Scale {
            d0,
            d1,
            r0,
            r1,
            log: true,
        }
    }

    fn at(&self, v: f64) -> f64 {
        let (a, b, v) = if self.log {
            (self.d0.log10(), self.d1.log10(), v.max(self.d0).log10())
        } else {
            (self.d0, self.d1, v)
        };
        let v = if v.is_finite() { v.clamp(a, b) } else { a };
        self.r0 + (v - a) / (b - a) * (self.r1 - self.r0)
    }
}

/// Ticks of a time axis from 0 to `t_max`, at a round step giving about eight of them.
fn time_ticks(t_max: f64) -> Vec<f64> {
    const STEPS: [f64; 14] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    ];
    let step = STEPS
        .iter()
        .copied()
        .find(|s| t_max / s <= 9.0)
        .unwrap_or_else(|| (t_max / 8.0 / 3600.0).ceil() * 3600.0);
    (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|t| *t <= t_max + 1e-9)
        .collect()
}

/// `10^k` as people write it on an axis.
fn decade_label(k: i32) -> String {
    match k {
        k if !(-3..=5).contains(&k) => format!("1e{k}"),
        k if k < 0 => format!("0.{}1", "0".repeat((-k - 1) as usize)),
        k => format!("1{}", "0".repeat(k as usize)),
    }
}

fn time_axis(svg: &mut String, x: &Scale, ctx: &Ctx, top: f64, bottom: f64, labels: bool) {
    for t in time_ticks(ctx.t_max) {
        let px = n(x.at(t));
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{px}\" y1=\"{}\" x2=\"{px}\" y2=\"{}\"/>",
            n(top),
            n(bottom)
        ));
        if labels {
            svg.push_str(&format!(
                "<line class=\"axis\" x1=\"{px}\" y1=\"{b}\" x2=\"{px}\" y2=\"{}\"/><text x=\"{px}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                n(bottom + 4.0),
                n(bottom + 16.0),
                clock(t),
                b = n(bottom),
            ));
        }
    }
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"{}\" y1=\"{b}\" x2=\"{}\" y2=\"{b}\"/>",
        n(x.r0),
        n(x.r1),
        b = n(bottom)
    ));
    if labels {
        svg.push_str(&format!(
            "<text class=\"title\" x=\"{}\" y=\"{}\" text-anchor=\"end\">time since start (m:ss)</text>",
            n(x.r1),
            n(bottom + 30.0)
        ));
    }
}

/// Horizontal grid lines and labels of a y axis at `ticks`.
fn y_axis(svg: &mut String, y: &Scale, ticks: &[(f64, String)], left: f64, right: f64) {
    for (v, label) in ticks {
        let py = n(y.at(*v));
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{}\" y1=\"{py}\" x2=\"{}\" y2=\"{py}\"/><text x=\"{}\" y=\"{py}\" dy=\"0.32em\" text-anchor=\"end\">{}</text>",
            n(left),
            n(right),
            n(left - 5.0),
            escape(label)
        ));
    }
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"{l}\" y1=\"{}\" x2=\"{l}\" y2=\"{}\"/>",
        n(y.r0),
        n(y.r1),
        l = n(left)
    ));
}

/// How a legend item is drawn.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Line,
    Dashed,
    Dot,
    Area,
}

/// Draws a legend from `(label, colour, mark)` items in rows from `(left, top)`, wrapping at
/// the plot's width; returns the height used.
fn legend(svg: &mut String, items: &[(String, String, Mark)], left: f64, top: f64) -> f64 {
    let mut x = left;
    let mut y = top + 8.0;
    for (label, colour, mark) in items {
        let w = 26.0 + label.chars().count() as f64 * CHAR_W + 14.0;
        if x + w > WIDTH - RIGHT && x > left {
            x = left;
            y += 16.0;
        }
        let c = escape(colour);
        match mark {
            Mark::Line => svg.push_str(&format!(
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"2\"/>",
                n(x),
                n(x + 20.0)
            )),
            Mark::Dashed => svg.push_str(&format!(
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/>",
                n(x),
                n(x + 20.0)
            )),
            Mark::Dot => svg.push_str(&format!(
                "<circle cx=\"{}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>",
                n(x + 10.0)
            )),
            Mark::Area => svg.push_str(&format!(
                "<rect x=\"{}\" y=\"{}\" width=\"20\" height=\"10\" fill=\"{c}\"/>",
                n(x),
                n(y - 5.0)
            )),
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{y}\" dy=\"0.32em\">{}</text>",
            n(x + 26.0),
            escape(label)
        ));
        x += w;
    }
    y - top + 10.0
}

/// Where a marker's label lies, `(start, end)` in pixels: right of its line, or left of it
/// when it would run past the plot's right edge.
fn marker_label_span(marker: &Marker, x: &Scale) -> (f64, f64) {
    let px = x.at(marker.t_s);
    let width = marker.label.chars().count() as f64 * CHAR_W;
    if px + 2.0 + width > WIDTH - 2.0 {
        (px - 2.0 - width, px - 2.0)
    } else {
        (px + 2.0, px + 2.0 + width)
    }
}

/// Row (0 = nearest the plot) of each marker's label, so that labels never overlap.
fn marker_rows(markers: &[Marker], x: &Scale) -> Vec<usize> {
    let spans: Vec<(f64, f64)> = markers.iter().map(|m| marker_label_span(m, x)).collect();
    let mut order: Vec<usize> = (0..markers.len()).collect();
    order.sort_by(|&a, &b| spans[a].0.total_cmp(&spans[b].0));
    let mut row_end: Vec<f64> = Vec::new();
    let mut rows = vec![0; markers.len()];
    for i in order {
        let (start, end) = spans[i];
        let row = match row_end.iter().position(|&e| e + 8.0 <= start) {
            Some(r) => r,
            None => {
                row_end.push(f64::NEG_INFINITY);
                row_end.len() - 1
            }
        };
        row_end[row] = end;
        rows[i] = row;
    }
    rows
}

/// Draws markers as vertical lines from `top` to `bottom`, labels stacked above `top`.
fn draw_markers(svg: &mut String, markers: &[Marker], x: &Scale, top: f64, bottom: f64) {
    let rows = marker_rows(markers, x);
    for (marker, row) in markers.iter().zip(rows) {
        if !marker.t_s.is_finite() {
            continue;
        }
        let px = x.at(marker.t_s);
        let colour = kind_colour(&marker.kind);
        let label_y = top - 4.0 - row as f64 * LABEL_ROW;
        let (label_x, _) = marker_label_span(marker, x);
        svg.push_str(&format!(
            "<g class=\"marker\"><title>{} · {} · {}</title><line x1=\"{p}\" y1=\"{}\" x2=\"{p}\" y2=\"{}\" stroke=\"{colour}\" stroke-width=\"1.2\"/><text class=\"marker-label\" x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text></g>",
            clock(marker.t_s),
            escape(&marker.kind),
            escape(&marker.label),
            n(label_y + 3.0),
            n(bottom),
            n(label_x),
            n(label_y),
            escape(&marker.label),
            p = n(px),
        ));
    }
}

fn marker_band(markers: &[Marker], x: &Scale) -> f64 {
    marker_rows(markers, x)
        .into_iter()
        .max()
        .map_or(0.0, |r| (r + 1) as f64 * LABEL_ROW + 4.0)
}

fn marker_legend(markers: &[Marker]) -> Vec<(String, String, Mark)> {
    let mut kinds: Vec<&str> = markers.iter().map(|m| m.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
        .into_iter()
        .map(|k| (k.to_owned(), kind_colour(k).to_owned(), Mark::Line))
        .collect()
}

fn open_svg(class: &str, height: f64, label: &str) -> String {
    format!(
        "<svg class=\"plot {class}\" viewBox=\"0 0 {WIDTH} {}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        n(height),
        escape(label)
    )
}

// ---------------------------------------------------------------------------------------------
// The plots.

/// The y domain of a line's score panels: whole decades around the positive scores and
/// thresholds, at most six of them, so the quiet level before a process change and the
/// 10–100× jump after it are both readable. Lower scores are clipped to the bottom.
fn score_domain(line: &LineReport) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for device in &line.devices {
        let values = device
            .scores
            .iter()
            .map(|p| f64::from(p.1))
            .chain(device.thresholds.iter().map(|t| f64::from(t.1)));
        for v in values.filter(|v| v.is_finite() && *v > 0.0) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if !lo.is_finite() {
        return (1e-3, 1.0);
    }
    let top = hi.log10().ceil();
    let bottom = lo.log10().floor().max(top - 6.0);
    let bottom = if bottom >= top { top - 1.0 } else { bottom };
    (10f64.powf(bottom), 10f64.powf(top))
}

fn score_plot(line: &LineReport, ctx: &Ctx) -> String {
    const PANEL: f64 = 112.0;
    const GAP: f64 = 18.0;
    let x = ctx.x(LEFT);
    let mut svg = String::new();

    let mut items: Vec<(String, String, Mark)> = line
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.device.clone(), device_colour(i).to_owned(), Mark::Line))
        .collect();
    let mut versions: Vec<&str> = Vec::new();
    for device in &line.devices {
        for (_, _, version) in &device.versions {
            if !versions.contains(&version.as_str()) {
                versions.push(version);
            }
        }
    }
    for version in versions {
        items.push((
            format!("threshold {version}"),
            ctx.version_colour(version).to_owned(),
            Mark::Dashed,
        ));
    }
    items.push(("anomaly flag".to_owned(), FLAG_COLOUR.to_owned(), Mark::Dot));
    items.push((
        "truly faulty".to_owned(),
        FAULTY_FILL.to_owned(),
        Mark::Area,
    ));
    items.extend(marker_legend(&line.markers));
    let legend_h = legend(&mut svg, &items, LEFT, 0.0);
    let top = legend_h + marker_band(&line.markers, &x) + 4.0;

    let (lo, hi) = score_domain(line);
    let decades = (hi.log10() - lo.log10()).round() as i32;
    let bottom_k = lo.log10().round() as i32;
    for (i, device) in line.devices.iter().enumerate() {
        let p_top = top + i as f64 * (PANEL + GAP);
        let y = Scale::log(lo, hi, p_top + PANEL, p_top);
        svg.push_str(&format!(
            "<rect class=\"panel\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{PANEL}\"/>",
            n(LEFT),
            n(p_top),
            n(x.r1 - LEFT)
        ));
        for &(from, to) in &device.faulty {
            let x0 = x.at(from);
            let x1 = x.at(to).max(x0 + 0.8);
            svg.push_str(&format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{PANEL}\" fill=\"{FAULTY_FILL}\"/>",
                n(x0),
                n(p_top),
                n(x1 - x0)
            ));
        }
        let step = if decades > 4 { 2 } else { 1 };
        let ticks: Vec<(f64, String)> = (0..=decades)
            .step_by(step)
            .map(|d| (10f64.powi(bottom_k + d), decade_label(bottom_k + d)))
            .collect();
        y_axis(&mut svg, &y, &ticks, LEFT, x.r1);
        time_axis(
            &mut svg,
            &x,
            ctx,
            p_top,
            p_top + PANEL,
            i + 1 == line.devices.len(),
        );

        // Each version's threshold over the time it ran, joined into one dashed step line.
        let mut previous: Option<(f64, f64)> = None;
        for (from, to, version) in &device.versions {
            let Some(&(_, threshold)) = device.thresholds.iter().find(|t| &t.0 == version) else {
                previous = None;
                continue;
            };
            let py = y.at(f64::from(threshold));
            let (x0, x1) = (x.at(*from), x.at(*to));
            if let Some((px, pyy)) = previous
                && (px - x0).abs() < 1.5
            {
                svg.push_str(&format!(
                    "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"3 3\"/>",
                    n(pyy),
                    n(py),
                    x = n(x0)
                ));
            }
            svg.push_str(&format!(
                "<line x1=\"{}\" y1=\"{p}\" x2=\"{}\" y2=\"{p}\" stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"6 3\"><title>threshold of {} = {}</title></line>",
                n(x0),
                n(x1),
                ctx.version_colour(version),
                escape(version),
                threshold,
                p = n(py)
            ));
            previous = Some((x1, py));
        }

        let points = downsample(&device.scores, MAX_POINTS);
        let mut d = String::new();
        let mut pen_down = false;
        for &(t, score, _) in &points {
            if !t.is_finite() || !score.is_finite() {
                pen_down = false;
                continue;
            }
            d.push_str(&format!(
                "{}{},{}",
                if pen_down { " L" } else { " M" },
                n(x.at(t)),
                n(y.at(f64::from(score)))
            ));
            pen_down = true;
        }
        if !d.is_empty() {
            svg.push_str(&format!(
                "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.1\" stroke-linejoin=\"round\"/>",
                d.trim_start(),
                device_colour(i)
            ));
        }
        for &(t, score, flag) in &points {
            if flag && t.is_finite() {
                let s = if score.is_finite() {
                    f64::from(score)
                } else {
                    hi
                };
                svg.push_str(&format!(
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2.2\" fill=\"{FLAG_COLOUR}\"/>",
                    n(x.at(t)),
                    n(y.at(s))
                ));
            }
        }
        svg.push_str(&format!(
            "<text class=\"panel-label\" x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
            n(LEFT + 6.0),
            n(p_top + 13.0),
            device_colour(i),
            escape(&device.device)
        ));
    }
    let bottom = top + line.devices.len() as f64 * (PANEL + GAP) - GAP;
    draw_markers(&mut svg, &line.markers, &x, top, bottom);
    svg.push_str(&format!(
        "<text class=\"title\" transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">anomaly score (log)</text>",
        n((top + bottom) / 2.0)
    ));
    let mut out = open_svg(
        "plot-scores",
        bottom + 36.0,
        &format!("anomaly scores of {}", line.line),
    );
    out.push_str(&svg);
    out.push_str("</svg>\n");
    out
}

fn f1_plot(line: &LineReport, ctx: &Ctx) -> String {
    const PANEL: f64 = 170.0;
    let x = ctx.x(LEFT);
    let mut svg = String::new();
    let mut items = vec![
        ("F1 per bucket".to_owned(), "#1f4e9c".to_owned(), Mark::Line),
        ("F1 of a phase".to_owned(), "#37474f".to_owned(), Mark::Line),
        ("0.9".to_owned(), "#2e7d32".to_owned(), Mark::Dashed),
    ];
    items.extend(marker_legend(&line.markers));
    let legend_h = legend(&mut svg, &items, LEFT, 0.0);
    let top = legend_h + marker_band(&line.markers, &x) + 4.0;
    let bottom = top + PANEL;
    let y = Scale::linear(0.0, 1.0, bottom, top);
    let ticks: Vec<(f64, String)> = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        .iter()
        .map(|v| (*v, format!("{v:.1}")))
        .collect();
    y_axis(&mut svg, &y, &ticks, LEFT, x.r1);
    time_axis(&mut svg, &x, ctx, top, bottom, true);
    svg.push_str(&format!(
        "<line x1=\"{}\" y1=\"{p}\" x2=\"{}\" y2=\"{p}\" stroke=\"#2e7d32\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/>",
        n(LEFT),
        n(x.r1),
        p = n(y.at(0.9))
    ));

    for phase in &line.phases {
        let Some(f1) = phase.f1.filter(|v| v.is_finite()) else {
            continue;
        };
        let (x0, x1) = (x.at(phase.from_s), x.at(phase.to_s));
        let py = y.at(f1);
        let label = format!("{} {}", phase.name, ratio(Some(f1), 2));
        // Below the segment when it sits near the top, so the label stays inside the panel.
        let label_y = if py - top < 16.0 { py + 14.0 } else { py - 6.0 };
        svg.push_str(&format!(
            "<g class=\"phase\"><line x1=\"{}\" y1=\"{p}\" x2=\"{}\" y2=\"{p}\" stroke=\"#37474f\" stroke-width=\"4\" stroke-opacity=\"0.55\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"phase-label\">{}</text></g>",
            n(x0),
            n(x1),
            n((x0 + x1) / 2.0),
            n(label_y),
            escape(&label),
            p = n(py)
        ));
    }

    let mut d = String::new();
    let mut pen_down = false;
    for &(t, f1) in &line.f1 {
        match f1.filter(|v| v.is_finite() && t.is_finite()) {
            Some(v) => {
                d.push_str(&format!(
                    "{}{},{}",
                    if pen_down { " L" } else { " M" },
                    n(x.at(t)),
                    n(y.at(v))
                ));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !d.is_empty() {
        svg.push_str(&format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"#1f4e9c\" stroke-width=\"1.6\"/>",
            d.trim_start()
        ));
    }
    for &(t, f1) in &line.f1 {
        if let Some(v) = f1.filter(|v| v.is_finite() && t.is_finite()) {
            svg.push_str(&format!(
                "<circle cx=\"{}\" cy=\"{}\" r=\"1.8\" fill=\"#1f4e9c\"/>",
                n(x.at(t)),
                n(y.at(v))
            ));
        }
    }
    draw_markers(&mut svg, &line.markers, &x, top, bottom);
    svg.push_str(&format!(
        "<text class=\"title\" transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">F1</text>",
        n((top + bottom) / 2.0)
    ));
    let mut out = open_svg(
        "plot-f1",
        bottom + 36.0,
        &format!("F1 over time of {}", line.line),
    );
    out.push_str(&svg);
    out.push_str("</svg>\n");
    out
}

fn swimlanes(data: &ReportData, ctx: &Ctx) -> String {
    const ROW: f64 = 22.0;
    const LANE_LEFT: f64 = 150.0;
    let x = ctx.x(LANE_LEFT);
    let mut svg = String::new();
    let items: Vec<(String, String, Mark)> = ctx
        .versions
        .iter()
        .map(|(v, c)| (v.clone(), (*c).to_owned(), Mark::Area))
        .collect();
    let legend_h = legend(&mut svg, &items, LANE_LEFT, 0.0);
    let top = legend_h + 6.0;
    let mut y = top;
    for line in &data.lines {
        svg.push_str(&format!(
            "<text class=\"lane-line\" x=\"4\" y=\"{}\">{}</text>",
            n(y + 14.0),
            escape(&line.line)
        ));
        y += ROW;
        for (i, device) in line.devices.iter().enumerate() {
            svg.push_str(&format!(
                "<rect class=\"lane\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/><text x=\"14\" y=\"{}\" fill=\"{}\">{}</text>",
                n(LANE_LEFT),
                n(y + 2.0),
                n(x.r1 - LANE_LEFT),
                n(ROW - 4.0),
                n(y + 15.0),
                device_colour(i),
                escape(&device.device)
            ));
            for (from, to, version) in &device.versions {
                let x0 = x.at(*from);
                let w = (x.at(*to) - x0).max(1.0);
                let label = if w > version.chars().count() as f64 * CHAR_W + 6.0 {
                    format!(
                        "<text x=\"{}\" y=\"{}\" class=\"seg-label\">{}</text>",
                        n(x0 + 4.0),
                        n(y + 15.0),
                        escape(version)
                    )
                } else {
                    String::new()
                };
                svg.push_str(&format!(
                    "<g><title>{} on {}: {} to {}</title><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"1\"/>{label}</g>",
                    escape(version),
                    escape(&device.device),
                    clock(*from),
                    clock(*to),
                    n(x0),
                    n(y + 2.0),
                    n(w),
                    n(ROW - 4.0),
                    ctx.version_colour(version)
                ));
            }
            y += ROW;
        }
    }
    time_axis(&mut svg, &x, ctx, top, y, true);
    let mut out = open_svg("plot-versions", y + 36.0, "model versions per device");
    out.push_str(&svg);
    out.push_str("</svg>\n");
    out
}

fn pool_plot(pool: &PoolReport, ctx: &Ctx) -> String {
    const ROW: f64 = 24.0;
    const USE_PANEL: f64 = 90.0;
    let x = ctx.x(LEFT);
    let mut svg = String::new();
    let mut outcomes: Vec<&str> = pool.jobs.iter().map(|j| j.outcome.as_str()).collect();
    outcomes.sort_unstable();
    outcomes.dedup();
    let mut items: Vec<(String, String, Mark)> = outcomes
        .iter()
        .map(|o| ((*o).to_owned(), outcome_colour(o).to_owned(), Mark::Area))
        .collect();
    items.push(("queued".to_owned(), "#9e9e9e".to_owned(), Mark::Line));
    let legend_h = legend(&mut svg, &items, LEFT, 0.0);
    let top = legend_h + 6.0;

    let gpu_rows = pool
        .jobs
        .iter()
        .flat_map(|j| j.gpus.iter().map(|g| g + 1))
        .max()
        .unwrap_or(0)
        .max(pool.capacity);
    let waiting_row = pool.jobs.iter().any(|j| j.gpus.is_empty());
    let rows = gpu_rows as usize + usize::from(waiting_row);
    let gantt_bottom = top + rows as f64 * ROW;
    for r in 0..rows {
        let y = top + r as f64 * ROW;
        let label = if r < gpu_rows as usize {
            format!("GPU {r}")
        } else {
            "not placed".to_owned()
        };
        svg.push_str(&format!(
            "<rect class=\"lane\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            n(LEFT),
            n(y + 2.0),
            n(x.r1 - LEFT),
            n(ROW - 4.0),
            n(LEFT - 5.0),
            n(y + ROW / 2.0 + 4.0)
        ));
    }
    time_axis(&mut svg, &x, ctx, top, gantt_bottom, false);
    for job in &pool.jobs {
        let colour = outcome_colour(&job.outcome);
        let run_end = job.end_s.unwrap_or(ctx.t_max);
        let tip = format!(
            "{} ({}): {}, queued {}{}{}",
            job.job,
            job.line,
            job.outcome,
            clock(job.queued_s),
            job.start_s
                .map_or(String::new(), |s| format!(", started {}", clock(s))),
            job.end_s
                .map_or(String::new(), |s| format!(", ended {}", clock(s)))
        );
        let row_ys: Vec<f64> = if job.gpus.is_empty() {
            vec![top + gpu_rows as f64 * ROW]
        } else {
            job.gpus.iter().map(|g| top + f64::from(*g) * ROW).collect()
        };
        for ry in row_ys {
            let mid = ry + ROW / 2.0;
            let queue_end = job.start_s.unwrap_or(run_end);
            svg.push_str(&format!("<g><title>{}</title>", escape(&tip)));
            if queue_end > job.queued_s {
                let x0 = x.at(job.queued_s);
                svg.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"4\" fill=\"#9e9e9e\"/>",
                    n(x0),
                    n(mid - 2.0),
                    n((x.at(queue_end) - x0).max(1.0))
                ));
            }
            if let Some(start) = job.start_s {
                let x0 = x.at(start);
                let w = (x.at(run_end) - x0).max(1.5);
                svg.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"2\" fill=\"{colour}\"/>",
                    n(x0),
                    n(ry + 3.0),
                    n(w),
                    n(ROW - 6.0)
                ));
                let label = format!("{} · {}", job.job, job.line);
                if w > label.chars().count() as f64 * CHAR_W + 6.0 {
                    svg.push_str(&format!(
                        "<text x=\"{}\" y=\"{}\" class=\"bar-label\">{}</text>",
                        n(x0 + 4.0),
                        n(mid + 4.0),
                        escape(&label)
                    ));
                } else if w > job.job.chars().count() as f64 * CHAR_W + 6.0 {
                    svg.push_str(&format!(
                        "<text x=\"{}\" y=\"{}\" class=\"bar-label\">{}</text>",
                        n(x0 + 4.0),
                        n(mid + 4.0),
                        escape(&job.job)
                    ));
                }
            }
            svg.push_str("</g>");
        }
    }

    // GPUs in use over time, a step line from the jobs' starts and ends.
    let use_top = gantt_bottom + 26.0;
    let use_bottom = use_top + USE_PANEL;
    let max_in_use = f64::from(gpu_rows.max(1));
    let y = Scale::linear(0.0, max_in_use, use_bottom, use_top);
    let step = (max_in_use / 4.0).ceil().max(1.0);
    let ticks: Vec<(f64, String)> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v <= max_in_use)
        .map(|v| (v, format!("{v:.0}")))
        .collect();
    y_axis(&mut svg, &y, &ticks, LEFT, x.r1);
    time_axis(&mut svg, &x, ctx, use_top, use_bottom, true);
    let mut events: Vec<(f64, i64)> = Vec::new();
    for job in &pool.jobs {
        if let Some(start) = job.start_s {
            let g = job.gpus.len().max(1) as i64;
            events.push((start, g));
            events.push((job.end_s.unwrap_or(ctx.t_max), -g));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut in_use = 0i64;
    let mut d = format!("M{},{}", n(x.at(0.0)), n(y.at(0.0)));
    for (t, delta) in events {
        d.push_str(&format!(" H{}", n(x.at(t))));
        in_use += delta;
        d.push_str(&format!(" V{}", n(y.at(in_use as f64))));
    }
    d.push_str(&format!(" H{}", n(x.r1)));
    svg.push_str(&format!(
        "<path d=\"{d}\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.8\"/><text class=\"title\" x=\"{}\" y=\"{}\">GPUs in use</text>",
        n(LEFT + 6.0),
        n(use_top + 12.0)
    ));
    let mut out = open_svg("plot-pool", use_bottom + 36.0, "GPU pool occupancy");
    out.push_str(&svg);
    out.push_str("</svg>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Tables.

/// The top of the report: per line, the F1 of each phase in order, large and coloured.
fn headline(data: &ReportData) -> String {
    let mut html = String::from("<section class=\"headline\">\n");
    for line in &data.lines {
        html.push_str(&format!(
            "<div class=\"card\"><div class=\"card-title\">{} <span class=\"scenario\">{}</span></div><div class=\"phases\">",
            escape(&line.line),
            escape(&line.scenario)
        ));
        if line.phases.is_empty() {
            html.push_str("<span class=\"empty\">no phase scored</span>");
        }
        for (i, phase) in line.phases.iter().enumerate() {
            if i > 0 {
                html.push_str("<span class=\"arrow\">→</span>");
            }
            html.push_str(&format!(
                "<div class=\"phase-box\"><div class=\"big {}\">{}</div><div class=\"small\">F1 {}</div></div>",
                f1_class(phase.f1),
                ratio(phase.f1, 2),
                escape(&phase.name)
            ));
        }
        html.push_str("</div></div>\n");
    }
    html.push_str("</section>\n");
    html
}

fn phase_table(line: &LineReport) -> String {
    if line.phases.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<table class=\"grid-table\"><thead><tr><th>phase</th><th>from</th><th>to</th><th class=\"num\">windows</th><th class=\"num\">precision</th><th class=\"num\">recall</th><th class=\"num\">F1</th></tr></thead><tbody>\n",
    );
    for p in &line.phases {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num {}\">{}</td></tr>\n",
            escape(&p.name),
            clock(p.from_s),
            clock(p.to_s),
            p.windows,
            ratio(p.precision, 3),
            ratio(p.recall, 3),
            f1_class(p.f1),
            ratio(p.f1, 3)
        ));
    }
    html.push_str("</tbody></table>\n");
    html
}

fn timeline_table(data: &ReportData) -> String {
    let mut html = String::from("<section><h2>Timeline</h2>\n");
    if data.timeline.is_empty() {
        html.push_str("<p class=\"empty\">Nothing happened worth a line.</p></section>\n");
        return html;
    }
    html.push_str("<table class=\"grid-table timeline\"><thead><tr><th>time</th><th>line</th><th>kind</th><th>what happened</th></tr></thead><tbody>\n");
    for entry in &data.timeline {
        html.push_str(&format!(
            "<tr><td class=\"num\">{}</td><td>{}</td><td><span class=\"badge\" style=\"background:{}\">{}</span></td><td>{}</td></tr>\n",
            clock(entry.t_s),
            escape(&entry.line),
            kind_colour(&entry.kind),
            escape(&entry.kind),
            escape(&entry.text)
        ));
    }
    html.push_str("</tbody></table></section>\n");
    html
}

const CSS: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a; background: #f4f5f7; margin: 0; }
header, section { max-width: 1000px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 20px; }
h1 { font-size: 24px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 2px solid #d0d4da; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 14px 0 4px; color: #444; }
.meta { color: #666; margin: 0 0 12px; }
.scenario { font-weight: normal; color: #666; font-size: 0.85em; }
.headline { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #d0d4da; border-radius: 6px; padding: 10px 14px; flex: 1 1 420px; }
.card-title { font-weight: 600; margin-bottom: 6px; }
.phases { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.phase-box { text-align: center; min-width: 90px; }
.big { font-size: 30px; font-weight: 700; line-height: 1.1; }
.small { font-size: 12px; color: #555; }
.arrow { font-size: 22px; color: #999; }
.good { color: #2e7d32; } .fair { color: #e65100; } .poor { color: #c62828; } .none { color: #999; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; }
.kv th { text-align: left; font-weight: 600; padding: 3px 14px 3px 8px; color: #444; }
.kv td { padding: 3px 8px; font-variant-numeric: tabular-nums; }
.kv tr:nth-child(odd), .grid-table tbody tr:nth-child(odd) { background: #f7f8fa; }
.grid-table { width: 100%; }
.grid-table th { text-align: left; border-bottom: 1px solid #bbb; padding: 4px 8px; font-weight: 600; }
.grid-table td { padding: 3px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; color: #fff; border-radius: 3px; padding: 0 6px; font-size: 12px; font-weight: 600; }
.empty { color: #777; font-style: italic; }
svg.plot { display: block; width: 100%; height: auto; background: #fff; border: 1px solid #d0d4da; border-radius: 4px; margin: 4px 0 8px; }
svg.plot text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
svg.plot text:not([fill]) { fill: #333; }
svg.plot .title { fill: #555; font-style: italic; }
svg.plot .panel-label, svg.plot .lane-line { font-weight: 700; }
svg.plot .panel-label, svg.plot .marker-label, svg.plot .phase-label { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
svg.plot .phase-label { font-weight: 600; fill: #263238; }
svg.plot .seg-label { fill: #111; font-weight: 600; }
svg.plot .bar-label { fill: #fff; font-weight: 600; }
svg.plot .grid { stroke: #e6e8eb; stroke-width: 1; }
svg.plot .axis { stroke: #666; stroke-width: 1; }
svg.plot .panel { fill: #fff; stroke: #c8ccd2; }
svg.plot .lane { fill: #f4f5f7; }
@media print {
  body { background: #fff; font-size: 12px; }
  section, svg.plot, .card, tr { break-inside: avoid; }
  .line { break-before: page; }
  .badge { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  svg.plot { border: none; }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, base: f32, versions: &[(f64, f64, &str, f32)]) -> DeviceSeries {
        let scores = (0..120)
            .map(|i| {
                let t = f64::from(i);
                let score = if i >= 60 { base * 40.0 } else { base };
                (t, score, i >= 60 && i % 7 == 0)
            })
            .collect();
        DeviceSeries {
            device: name.to_owned(),
            scores,
            versions: versions
                .iter()
                .map(|(a, b, v, _)| (*a, *b, (*v).to_owned()))
                .collect(),
            thresholds: versions
                .iter()
                .map(|(_, _, v, t)| ((*v).to_owned(), *t))
                .collect(),
            faulty: vec![(70.0, 80.0), (95.0, 99.0)],
        }
    }

    fn phase(name: &str, from: f64, to: f64, f1: Option<f64>) -> PhaseScore {
        PhaseScore {
            name: name.to_owned(),
            from_s: from,
            to_s: to,
            windows: 180,
            precision: f1.map(|f| f + 0.01),
            recall: f1.map(|f| f - 0.01),
            f1,
        }
    }

    fn sample() -> ReportData {
        let v1 = "m-2024.1";
        let v2 = "m-retrain-7";
        ReportData {
            title: "Loopline demo <plant-1>".to_owned(),
            generated: "2025-01-02T03:04:05Z".to_owned(),
            duration_s: 120.0,
            lines: vec![
                LineReport {
                    line: "line-1".to_owned(),
                    scenario: "recipe-change".to_owned(),
                    devices: vec![
                        device(
                            "dev-alpha",
                            0.02,
                            &[(0.0, 90.0, v1, 0.05), (90.0, 120.0, v2, 1.5)],
                        ),
                        device(
                            "dev-beta",
                            0.03,
                            &[(0.0, 95.0, v1, 0.05), (95.0, 120.0, v2, 1.5)],
                        ),
                    ],
                    f1: (0..12)
                        .map(|i| {
                            let t = f64::from(i) * 10.0;
                            (
                                t,
                                if i == 5 {
                                    None
                                } else {
                                    Some(if i < 6 { 0.95 } else { 0.4 })
                                },
                            )
                        })
                        .collect(),
                    phases: vec![
                        phase("before the change", 0.0, 60.0, Some(0.912)),
                        phase("after the change", 60.0, 90.0, Some(0.418)),
                        phase("after the rollout", 90.0, 120.0, None),
                    ],
                    markers: vec![
                        Marker {
                            t_s: 60.0,
                            label: "recipe change".to_owned(),
                            kind: "change".to_owned(),
                        },
                        Marker {
                            t_s: 62.0,
                            label: "drift alert".to_owned(),
                            kind: "alert".to_owned(),
                        },
                        Marker {
                            t_s: 90.0,
                            label: "rollout m-retrain-7".to_owned(),
                            kind: "rollout".to_owned(),
                        },
                    ],
                },
                LineReport {
                    line: "line-2".to_owned(),
                    scenario: "normal".to_owned(),
                    devices: vec![device("dev-gamma", 0.01, &[(0.0, 120.0, v1, 0.05)])],
                    f1: vec![(10.0, Some(0.97)), (20.0, Some(0.99))],
                    phases: vec![phase("whole run", 0.0, 120.0, Some(0.987))],
                    markers: vec![],
                },
            ],
            pool: PoolReport {
                capacity: 4,
                backend: "local".to_owned(),
                jobs: vec![
                    PoolJob {
                        job: "job-1".to_owned(),
                        line: "line-1".to_owned(),
                        gpus: vec![0, 1],
                        queued_s: 63.0,
                        start_s: Some(65.0),
                        end_s: Some(88.0),
                        outcome: "promoted".to_owned(),
                    },
                    PoolJob {
                        job: "job-2".to_owned(),
                        line: "line-2".to_owned(),
                        gpus: vec![2],
                        queued_s: 70.0,
                        start_s: Some(71.0),
                        end_s: Some(80.0),
                        outcome: "failed".to_owned(),
                    },
                    PoolJob {
                        job: "job-3".to_owned(),
                        line: "line-2".to_owned(),
                        gpus: vec![],
                        queued_s: 100.0,
                        start_s: None,
                        end_s: None,
                        outcome: "queued".to_owned(),
                    },
                ],
            },
            timeline: vec![
                TimelineEntry {
                    t_s: 60.0,
                    line: "line-1".to_owned(),
                    kind: "change".to_owned(),
                    text: "recipe <B> & co > old".to_owned(),
                },
                TimelineEntry {
                    t_s: 90.0,
                    line: "line-1".to_owned(),
                    kind: "rollout".to_owned(),
                    text: "m-retrain-7 to 2 devices".to_owned(),
                },
            ],
            summary_rows: vec![
                ("rows in lake".to_owned(), "12 345 678".to_owned()),
                ("devices".to_owned(), "3".to_owned()),
            ],
        }
    }

    #[test]
    fn renders_every_plot_balanced_with_names_versions_and_scores() {
        let html = render(&sample());
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        // Two lines × (scores + F1), one swimlane chart, one pool chart.
        assert_eq!(html.matches("class=\"plot plot-scores\"").count(), 2);
        assert_eq!(html.matches("class=\"plot plot-f1\"").count(), 2);
        assert_eq!(html.matches("class=\"plot plot-versions\"").count(), 1);
        assert_eq!(html.matches("class=\"plot plot-pool\"").count(), 1);
        assert_eq!(html.matches("<svg").count(), 6);
        for name in [
            "dev-alpha",
            "dev-beta",
            "dev-gamma",
            "m-2024.1",
            "m-retrain-7",
            "job-1",
        ] {
            assert!(html.contains(name), "{name} missing");
        }
        assert!(html.contains("recipe &lt;B&gt; &amp; co &gt; old"));
        assert!(!html.contains("recipe <B>"));
        assert!(html.contains("<title>Loopline demo &lt;plant-1&gt;</title>"));
        // Phase F1 in the tables (3 decimals), in the headline (2), undefined as a dash.
        for f1 in ["0.912", "0.418", "0.987", "0.91", "0.42"] {
            assert!(html.contains(f1), "{f1} missing");
        }
        assert!(html.contains("<td class=\"num none\">–</td>"));
        assert!(html.contains("before the change 0.91"));
        assert!(html.contains("rows in lake"));
        assert!(!html.contains("NaN"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("href=") && !html.contains("src=") && !html.contains("@import"));
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(render(&sample()), render(&sample()));
    }

    #[test]
    fn downsampling_keeps_the_maximum_and_every_flag() {
        let scores: Vec<(f64, f32, bool)> = (0..100_000)
            .map(|i| {
                let t = f64::from(i) * 0.01;
                let score = ((i * 7919) % 1000) as f32 / 1000.0;
                (t, score, i % 997 == 0)
            })
            .chain([(500.005, 99.0, false)])
            .collect();
        let out = downsample(&scores, 1500);
        assert!(out.len() <= 1500, "{} points", out.len());
        assert!(out.len() > 1400);
        assert!(out.iter().any(|p| p.1 == 99.0));
        let bucket = 999.99 / 1500.0;
        for &(t, _, flag) in &scores {
            if flag {
                assert!(
                    out.iter().any(|p| p.2 && (p.0 - t).abs() <= bucket),
                    "flag at {t} lost"
                );
            }
        }
        // Every bucket keeps its own maximum: the first 1/1500 of the series.
        let first_max = scores
            .iter()
            .filter(|p| p.0 < 999.99 / 1500.0)
            .map(|p| p.1)
            .fold(f32::MIN, f32::max);
        assert_eq!(out[0].1, first_max);
        let short = vec![(0.0, 1.0, false), (1.0, 2.0, true)];
        assert_eq!(downsample(&short, 1500), short);
    }

    #[test]
    fn long_series_are_drawn_with_at_most_max_points() {
        let mut data = sample();
        data.lines[0].devices[0].scores = (0..20_000)
            .map(|i| (f64::from(i) * 0.006, 0.5, false))
            .collect();
        data.lines.truncate(1);
        data.lines[0].devices.truncate(1);
        let html = render(&data);
        let path = html
            .split("<path d=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        let points = path.matches('M').count() + path.matches('L').count();
        assert!(points <= MAX_POINTS && points > 1000, "{points} points");
    }

    #[test]
    fn an_empty_line_and_an_empty_report_render() {
        let mut data = sample();
        data.lines[1].devices.clear();
        data.lines[1].f1.clear();
        data.lines[1].phases.clear();
        let html = render(&data);
        assert!(html.contains("No device of this line reported scores."));
        assert_eq!(html.matches("class=\"plot plot-scores\"").count(), 1);

        let empty = ReportData {
            title: String::new(),
            generated: String::new(),
            duration_s: 0.0,
            lines: vec![],
            pool: PoolReport {
                capacity: 0,
                backend: String::new(),
                jobs: vec![],
            },
            timeline: vec![],
            summary_rows: vec![],
        };
        let html = render(&empty);
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn score_domain_spans_whole_decades_around_the_jump() {
        let data = sample();
        // Scores 0.02 and 1.2 (0.03 × 40), thresholds 0.05 and 1.5: 0.01 to 10.
        let (lo, hi) = score_domain(&data.lines[0]);
        assert!(
            (lo - 0.01).abs() < 1e-12 && (hi - 10.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(65.4), "1:05");
    }

    #[test]
    fn marker_labels_take_separate_rows_and_stay_inside_the_plot() {
        let x = Scale::linear(0.0, 100.0, LEFT, WIDTH - RIGHT);
        let marker = |t: f64, label: &str| Marker {
            t_s: t,
            label: label.to_owned(),
            kind: "job".to_owned(),
        };
        let markers = vec![
            marker(10.0, "a long first label"),
            marker(11.0, "second"),
            marker(60.0, "far away"),
            marker(100.0, "at the very end"),
        ];
        assert_eq!(marker_rows(&markers, &x), vec![0, 1, 0, 0]);
        let (start, end) = marker_label_span(&markers[3], &x);
        assert!(end <= WIDTH && start < x.at(100.0), "{start}..{end}");
    }

    #[test]
    fn write_replaces_the_file_through_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        std::fs::write(&path, "old").unwrap();
        write(&sample(), &path).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let err = write(&sample(), &dir.path().join("missing/report.html")).unwrap_err();
        assert!(err.to_string().contains("missing/report.html"), "{err}");
        // A copy to look at in a browser.
        let _ = write(&sample(), Path::new("/tmp/loopline-report-sample.html"));
    }
}
