//! The report: what `sluice-bench report` makes of result files. A Markdown
//! summary with one row per run, a latency-percentile SVG per run (drawn here,
//! no plotting crate), and the machine's limits measured by `scripts/bench.sh`
//! (fio, iperf3) so every figure can be read against what the hardware allows.

use crate::result::{Percentiles, RunResult, RESULT_FORMAT};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Printed for a value that was not measured.
const DASH: &str = "–";

/// This machine's limits, measured by scripts/bench.sh before the workloads.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MachineLimits {
    /// fio sequential O_DIRECT write bandwidth, MB/s (10^6 bytes).
    pub disk_write_mb_per_s: Option<f64>,
    /// fio fdatasync latency percentiles, microseconds.
    pub fdatasync_p50_us: Option<f64>,
    pub fdatasync_p99_us: Option<f64>,
    /// iperf3 loopback TCP bandwidth, MB/s.
    pub loopback_mb_per_s: Option<f64>,
}

// ---------------------------------------------------------------------------
// Machine limits: fio and iperf3 JSON.

/// Parses a tool's JSON output, skipping any notes printed before the first `{`.
fn parse_json(tool: &str, text: &str) -> Result<Value, String> {
    let start = text
        .find('{')
        .ok_or_else(|| format!("{tool} output is not JSON (no '{{' in it)"))?;
    match serde_json::Deserializer::from_str(&text[start..])
        .into_iter::<Value>()
        .next()
    {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(format!("{tool} output is not valid JSON: {e}")),
        None => Err(format!("{tool} output is empty")),
    }
}

/// Follows a dotted path of object keys.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// The `jobs` array of fio's JSON; each job must have run without error.
fn fio_jobs(json: &str) -> Result<Vec<Value>, String> {
    let value = parse_json("fio", json)?;
    let jobs = match value.get("jobs").and_then(Value::as_array) {
        Some(jobs) if !jobs.is_empty() => jobs.clone(),
        _ => return Err("fio output: missing or empty \"jobs\" array".into()),
    };
    for (i, job) in jobs.iter().enumerate() {
        let error = job.get("error").and_then(Value::as_i64).unwrap_or(0);
        if error != 0 {
            return Err(format!("fio output: jobs[{i}] failed with error {error}"));
        }
    }
    Ok(jobs)
}

/// fio --output-format=json of a sequential write job: summed write bandwidth over all jobs, MB/s
/// (fio's "bw_bytes" is bytes/s).
pub fn parse_fio_write(json: &str) -> Result<f64, String> {
    let mut bytes_per_s = 0.0;
    for (i, job) in fio_jobs(json)?.iter().enumerate() {
        bytes_per_s += at(job, "write.bw_bytes")
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("fio output: missing jobs[{i}].write.bw_bytes"))?;
    }
    if bytes_per_s <= 0.0 {
        return Err("fio output: write.bw_bytes is 0 (did the job write anything?)".into());
    }
    Ok(bytes_per_s / 1e6)
}

/// fio --output-format=json of a job run with fdatasync=1: (p50, p99) of the "sync" latency
/// section, microseconds (fio reports "sync" -> "lat_ns" -> "percentile" with keys like
/// "50.000000", "99.000000", in nanoseconds).
///
/// With several jobs (no group_reporting), the worst of each percentile.
pub fn parse_fio_sync(json: &str) -> Result<(f64, f64), String> {
    let (mut p50_us, mut p99_us) = (0.0f64, 0.0f64);
    for (i, job) in fio_jobs(json)?.iter().enumerate() {
        let path = format!("jobs[{i}].sync.lat_ns.percentile");
        let percentiles = at(job, "sync.lat_ns.percentile")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                format!("fio output: missing {path} (was the job run with fdatasync=1?)")
            })?;
        let find = |wanted: f64| {
            percentiles
                .iter()
                .find(|(key, _)| key.parse::<f64>().is_ok_and(|k| (k - wanted).abs() < 1e-6))
                .and_then(|(_, v)| v.as_f64())
                .ok_or_else(|| format!("fio output: {path} has no \"{wanted:.6}\" entry"))
        };
        p50_us = p50_us.max(find(50.0)? / 1000.0);
        p99_us = p99_us.max(find(99.0)? / 1000.0);
    }
    Ok((p50_us, p99_us))
}

/// iperf3 -J output: end.sum_received.bits_per_second converted to MB/s.
pub fn parse_iperf3(json: &str) -> Result<f64, String> {
    let value = parse_json("iperf3", json)?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3 failed: {error}"));
    }
    let bits_per_s = at(&value, "end.sum_received.bits_per_second")
        .and_then(Value::as_f64)
        .ok_or("iperf3 output: missing end.sum_received.bits_per_second")?;
    Ok(bits_per_s / 8.0 / 1e6)
}

// ---------------------------------------------------------------------------
// Result files.

/// Reads a result file written by `sluice-bench run --json`; refuses a `format` other than
/// RESULT_FORMAT with a clear message naming the file.
pub fn read_result(path: &Path) -> Result<RunResult, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read result file {name}: {e}"))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("result file {name} is not valid JSON: {e}"))?;
    // The format is checked before the fields, so an old or new file gets
    // this message rather than a missing-field error.
    match value.get("format").and_then(Value::as_u64) {
        Some(format) if format == u64::from(RESULT_FORMAT) => {}
        Some(format) => {
            return Err(format!(
                "result file {name} has format {format}, but this sluice-bench reads format {RESULT_FORMAT}; \
                 use the sluice-bench version that wrote it, or run the workload again"
            ))
        }
        None => {
            return Err(format!(
                "result file {name} has no \"format\" number: not a sluice-bench result?"
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| format!("result file {name}: {e}"))
}

// ---------------------------------------------------------------------------
// Text.

/// Microseconds as milliseconds with 3 decimals.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// A percentile in milliseconds, or a dash when the histogram is empty.
fn ms_or_dash(p: &Percentiles, us: u64) -> String {
    if p.count == 0 {
        DASH.into()
    } else {
        ms(us)
    }
}

/// Pads columns to equal width: the first left-aligned, the rest right-aligned.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if i == 0 {
                line.push_str(cell);
                line.push_str(&pad);
            } else {
                line.push_str("  ");
                line.push_str(&pad);
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human summary printed at the end of a run: an aligned plain-text table (throughput
/// produce/consume msgs/s and MB/s, totals, and one row per histogram — publish latency, publish
/// delay, end-to-end — with columns p50 p75 p95 p99 p99.9 p99.99 max, shown in milliseconds with 3
/// decimals), plus the drain line for a backlog run.
pub fn summary_table(result: &RunResult) -> String {
    let mut out = format!(
        "{}: {:.1} s measured\n\n",
        result.workload.name, result.measured_s
    );
    let cells = |s: &[&str]| s.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let mut throughput = vec![cells(&["throughput", "msgs/s", "MB/s", "messages"])];
    for (label, t) in [("produce", &result.produce), ("consume", &result.consume)] {
        throughput.push(vec![
            label.into(),
            format!("{:.0}", t.msgs_per_s),
            format!("{:.2}", t.mb_per_s),
            t.messages.to_string(),
        ]);
    }
    out.push_str(&align(&throughput));

    let totals = &result.totals;
    writeln!(
        out,
        "\ntotals: produced {}, consumed {}, produce errors {}, backlog max {} messages",
        totals.produced, totals.consumed, totals.produce_errors, result.backlog_max_messages
    )
    .unwrap();
    if result.workload.consumers > 0 && totals.consumed != totals.produced {
        let missing = totals.produced as i128 - totals.consumed as i128;
        writeln!(
            out,
            "warning: consumed differs from produced by {missing} messages"
        )
        .unwrap();
    }
    for (kind, count) in &result.errors {
        writeln!(out, "errors: {kind}: {count}").unwrap();
    }
    if !result.retries.is_empty() {
        writeln!(out, "retries: {}", crate::retry::summary(&result.retries)).unwrap();
    }
    if totals.lost_after_retries > 0 {
        writeln!(
            out,
            "lost after retries: {} messages (retried for delivery_timeout_ms = {} ms)",
            totals.lost_after_retries, result.workload.delivery_timeout_ms
        )
        .unwrap();
    }

    let mut latency = vec![cells(&[
        "latency (ms)",
        "count",
        "p50",
        "p75",
        "p95",
        "p99",
        "p99.9",
        "p99.99",
        "max",
    ])];
    for (label, p) in [
        ("publish latency", &result.publish_latency_us),
        ("publish delay", &result.publish_delay_us),
        ("end-to-end", &result.e2e_latency_us),
    ] {
        let mut row = vec![label.to_string(), p.count.to_string()];
        for us in [p.p50, p.p75, p.p95, p.p99, p.p999, p.p9999, p.max] {
            row.push(ms_or_dash(p, us));
        }
        latency.push(row);
    }
    out.push('\n');
    out.push_str(&align(&latency));

    if let Some(drain) = &result.drain {
        let seconds = drain.seconds.max(1e-9);
        writeln!(
            out,
            "\ndrain: {} messages ({:.1} MB) in {:.3} s = {:.0} msgs/s, {:.2} MB/s",
            drain.backlog_messages,
            drain.backlog_bytes as f64 / 1e6,
            drain.seconds,
            drain.backlog_messages as f64 / seconds,
            drain.backlog_bytes as f64 / seconds / 1e6,
        )
        .unwrap();
    }
    out
}

/// A workload name made safe for a file name.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "workload".into()
    } else {
        stem
    }
}

/// `<name>-latency.svg` per result, `<name>-2-latency.svg`, ... for repeats.
fn svg_file_names(results: &[RunResult]) -> Vec<String> {
    let mut used = HashSet::new();
    results
        .iter()
        .map(|result| {
            let base = file_stem(&result.workload.name);
            (1..)
                .map(|n| match n {
                    1 => format!("{base}-latency.svg"),
                    n => format!("{base}-{n}-latency.svg"),
                })
                .find(|file| used.insert(file.clone()))
                .expect("an unused name")
        })
        .collect()
}

/// Text for one Markdown table cell or list line.
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// The Markdown report: a title, a "Machine" section listing the limits (or "not measured"), then
/// ONE table with columns: workload, MB/s, msgs/s, publish p50/p99/p99.9 (ms), e2e p50/p99/p99.9
/// (ms), and "of disk" = produce MB/s as a fraction of disk_write_mb_per_s (e.g. "0.52", or "–" if
/// unknown). For a backlog run (result.drain is Some) the MB/s/msgs/s are the consume (drain)
/// figures and the workload cell says "(drain)". Below the table: per-workload one-line description
/// (workload.description) and a link to its plot `<name>-latency.svg`. Values with count 0 print
/// "–".
pub fn markdown(results: &[RunResult], limits: &MachineLimits) -> String {
    let measured = |v: Option<f64>, unit: &str| match v {
        Some(v) => format!("{v:.1} {unit}"),
        None => "not measured".into(),
    };
    let mut out = String::from("# sluice-bench report\n\n## Machine\n\n");
    writeln!(
        out,
        "- Disk sequential write (fio, O_DIRECT): {}",
        measured(limits.disk_write_mb_per_s, "MB/s")
    )
    .unwrap();
    let fdatasync = match (limits.fdatasync_p50_us, limits.fdatasync_p99_us) {
        (None, None) => "not measured".to_string(),
        (p50, p99) => format!("p50 {}, p99 {}", measured(p50, "µs"), measured(p99, "µs")),
    };
    writeln!(out, "- fdatasync latency (fio): {fdatasync}").unwrap();
    writeln!(
        out,
        "- Loopback TCP (iperf3): {}",
        measured(limits.loopback_mb_per_s, "MB/s")
    )
    .unwrap();

    out.push_str(
        "\n## Results\n\nMB = 10^6 bytes of payload; latencies in milliseconds. \
         For a backlog run the throughput is the drain's.\n\n",
    );
    out.push_str(
        "| workload | MB/s | msgs/s | publish p50 (ms) | publish p99 (ms) | publish p99.9 (ms) \
         | e2e p50 (ms) | e2e p99 (ms) | e2e p99.9 (ms) | of disk |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for result in results {
        let (name, throughput) = match result.drain {
            Some(_) => (format!("{} (drain)", result.workload.name), &result.consume),
            None => (result.workload.name.clone(), &result.produce),
        };
        let of_disk = match limits.disk_write_mb_per_s {
            Some(disk) if disk > 0.0 => format!("{:.2}", result.produce.mb_per_s / disk),
            _ => DASH.into(),
        };
        let (publish, e2e) = (&result.publish_latency_us, &result.e2e_latency_us);
        let cells = [
            md_escape(&name),
            format!("{:.1}", throughput.mb_per_s),
            format!("{:.0}", throughput.msgs_per_s),
            ms_or_dash(publish, publish.p50),
            ms_or_dash(publish, publish.p99),
            ms_or_dash(publish, publish.p999),
            ms_or_dash(e2e, e2e.p50),
            ms_or_dash(e2e, e2e.p99),
            ms_or_dash(e2e, e2e.p999),
            of_disk,
        ];
        writeln!(out, "| {} |", cells.join(" | ")).unwrap();
    }

    out.push_str("\n## Workloads\n\n");
    for (result, svg) in results.iter().zip(svg_file_names(results)) {
        let description = md_escape(result.workload.description.trim());
        let separator = if description.is_empty() { "" } else { " " };
        let mut retries = String::new();
        if !result.retries.is_empty() {
            retries = format!(
                "; retries: {}",
                md_escape(&crate::retry::summary(&result.retries))
            );
        }
        if result.totals.lost_after_retries > 0 {
            write!(
                retries,
                "; lost after retries: {} messages",
                result.totals.lost_after_retries
            )
            .unwrap();
        }
        writeln!(
            out,
            "- **{}**:{separator}{description} ([latency plot]({svg})){retries}",
            md_escape(&result.workload.name)
        )
        .unwrap();
    }
    out
}

// ---------------------------------------------------------------------------
// SVG.

const SVG_WIDTH: f64 = 760.0;
const SVG_HEIGHT: f64 = 480.0;
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 730.0;
const PLOT_TOP: f64 = 60.0;
const PLOT_BOTTOM: f64 = 410.0;
/// The last tick on the percentile axis; p100 (the max) is drawn there.
const PERCENTILE_LAST: f64 = 99.999;
const PERCENTILE_TICKS: [(f64, &str); 6] = [
    (50.0, "50"),
    (90.0, "90"),
    (99.0, "99"),
    (99.9, "99.9"),
    (99.99, "99.99"),
    (PERCENTILE_LAST, "99.999"),
];

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The "nines" of a percentile: 90 → 1, 99 → 2, 99.9 → 3.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile.clamp(0.0, PERCENTILE_LAST) / 100.0).log10()
}

/// `10^exponent` written out: "0.01", "1", "100".
fn decade_label(exponent: i32) -> String {
    if exponent >= 0 {
        format!("1{}", "0".repeat(exponent as usize))
    } else {
        format!("0.{}1", "0".repeat((-exponent - 1) as usize))
    }
}

/// Appends a `<text>`: `attributes` as given, `content` escaped.
fn svg_text(out: &mut String, x: f64, y: f64, attributes: &str, content: &str) {
    let content = xml_escape(content);
    writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" {attributes}>{content}</text>"#
    )
    .unwrap();
}

fn svg_line(
    out: &mut String,
    (x1, y1): (f64, f64),
    (x2, y2): (f64, f64),
    stroke: &str,
    width: f64,
) {
    writeln!(
        out,
        r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
    )
    .unwrap();
}

/// A series is drawn when it has samples and some value above zero.
fn plotted(p: &Percentiles) -> bool {
    p.count > 0 && p.curve.iter().any(|&(_, us)| us > 0)
}

/// A self-contained SVG (no external fonts/scripts) latency-percentile plot for one run: x axis the
/// percentile on a "nines" log scale (x = -log10(1 - p/100), showing ticks at 50, 90, 99, 99.9,
/// 99.99, 99.999), y axis latency in ms on a log scale, one line each for publish latency, publish
/// delay (skip if count 0 or all zero), and end-to-end latency, using the (percentile, value_us)
/// points in `Percentiles::curve` (clamp p=100 to the last tick; skip points with value 0 on the
/// log axis by clamping to 1 µs). Title = workload name, legend, axis labels. Escape text for XML.
/// One plotted curve: label, colour, points as (nines, ms).
type Series<'a> = (String, &'a str, Vec<(f64, f64)>);

pub fn latency_svg(result: &RunResult) -> String {
    let series: Vec<Series> = [
        ("publish latency", "#1f77b4", &result.publish_latency_us),
        ("publish delay", "#ff7f0e", &result.publish_delay_us),
        ("end-to-end latency", "#2ca02c", &result.e2e_latency_us),
    ]
    .into_iter()
    .filter(|(_, _, p)| plotted(p))
    .map(|(label, colour, p)| {
        let points: Vec<(f64, f64)> = p
            .curve
            .iter()
            .filter(|(percentile, _)| percentile.is_finite())
            .map(|&(percentile, us)| (nines(percentile), us.max(1) as f64 / 1000.0))
            .collect();
        (format!("{label} (p99 {} ms)", ms(p.p99)), colour, points)
    })
    .collect();

    let (min_ms, max_ms) = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|&(_, ms)| ms))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (exp_lo, exp_hi) = if min_ms.is_finite() {
        let lo = min_ms.log10().floor() as i32;
        (lo, (max_ms.log10().ceil() as i32).max(lo + 1))
    } else {
        (-1, 1)
    };
    let x_max = nines(PERCENTILE_LAST);
    let x_of = |n: f64| PLOT_LEFT + n / x_max * (PLOT_RIGHT - PLOT_LEFT);
    let y_of = |ms: f64| {
        let fraction = (ms.log10() - exp_lo as f64) / (exp_hi - exp_lo) as f64;
        PLOT_BOTTOM - fraction * (PLOT_BOTTOM - PLOT_TOP)
    };

    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{SVG_HEIGHT}" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str("\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let centre = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
    let middle = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
    let title = r#"text-anchor="middle" font-size="18" font-weight="bold""#;
    svg_text(&mut out, centre, 28.0, title, &result.workload.name);
    let (mode, throughput) = match result.drain {
        Some(_) => ("drain", &result.consume),
        None => ("produce", &result.produce),
    };
    let subtitle = format!(
        "{mode} {:.0} msgs/s, {:.1} MB/s; {:.0} s measured",
        throughput.msgs_per_s, throughput.mb_per_s, result.measured_s
    );
    svg_text(
        &mut out,
        centre,
        46.0,
        r##"text-anchor="middle" fill="#555""##,
        &subtitle,
    );

    // Grid, tick labels, frame and axis labels.
    for (percentile, label) in PERCENTILE_TICKS {
        let x = x_of(nines(percentile));
        svg_line(&mut out, (x, PLOT_TOP), (x, PLOT_BOTTOM), "#ddd", 1.0);
        svg_text(
            &mut out,
            x,
            PLOT_BOTTOM + 18.0,
            r#"text-anchor="middle""#,
            label,
        );
    }
    for exponent in exp_lo..=exp_hi {
        let y = y_of(10f64.powi(exponent));
        svg_line(&mut out, (PLOT_LEFT, y), (PLOT_RIGHT, y), "#ddd", 1.0);
        svg_text(
            &mut out,
            PLOT_LEFT - 6.0,
            y + 4.0,
            r#"text-anchor="end""#,
            &decade_label(exponent),
        );
    }
    writeln!(
        out,
        r#"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        PLOT_RIGHT - PLOT_LEFT,
        PLOT_BOTTOM - PLOT_TOP
    )
    .unwrap();
    let x_label = "percentile (log scale of nines; the max is drawn at 99.999)";
    svg_text(
        &mut out,
        centre,
        PLOT_BOTTOM + 42.0,
        r#"text-anchor="middle""#,
        x_label,
    );
    let rotate = format!(r#"text-anchor="middle" transform="rotate(-90 22 {middle})""#);
    svg_text(&mut out, 22.0, middle, &rotate, "latency (ms, log scale)");

    // The lines, then the legend over them.
    for (_, colour, points) in &series {
        let coordinates: Vec<String> = points
            .iter()
            .map(|&(n, ms)| format!("{:.1},{:.1}", x_of(n), y_of(ms)))
            .collect();
        writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            coordinates.join(" ")
        )
        .unwrap();
    }
    if series.is_empty() {
        svg_text(
            &mut out,
            centre,
            middle,
            r#"text-anchor="middle""#,
            "no latency samples",
        );
    } else {
        writeln!(
            out,
            r##"<rect x="{}" y="{}" width="300" height="{}" fill="white" fill-opacity="0.85" stroke="#999"/>"##,
            PLOT_LEFT + 8.0,
            PLOT_TOP + 8.0,
            series.len() as f64 * 18.0 + 8.0
        )
        .unwrap();
        for (i, (label, colour, _)) in series.iter().enumerate() {
            let y = PLOT_TOP + 24.0 + i as f64 * 18.0;
            svg_line(
                &mut out,
                (PLOT_LEFT + 16.0, y),
                (PLOT_LEFT + 40.0, y),
                colour,
                2.0,
            );
            svg_text(&mut out, PLOT_LEFT + 48.0, y + 4.0, "", label);
        }
    }
    out.push_str("</svg>\n");
    out
}

// ---------------------------------------------------------------------------
// Files.

/// Writes `report.md`, `<name>-latency.svg` per result and `machine.json` into `dir` (created if
/// missing); returns the written paths. Duplicate workload names get a `-2`, `-3` suffix on their
/// SVG.
pub fn write_report(
    dir: &Path,
    results: &[RunResult],
    limits: &MachineLimits,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create report directory {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, contents: &str| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("report.md", &markdown(results, limits))?;
    for (result, svg) in results.iter().zip(svg_file_names(results)) {
        write(&svg, &latency_svg(result))?;
    }
    let machine = serde_json::to_string_pretty(limits).expect("MachineLimits serializes");
    write("machine.json", &(machine + "\n"))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Drain, Throughput, Totals};
    use crate::workload::Workload;

    /// `fio --name=w --size=8M --bs=1M --rw=write --direct=1 --ioengine=libaio
    /// --output-format=json` (fio-3.33), trimmed to the fields read and a few around them.
    const FIO_WRITE: &str = r#"{
      "fio version" : "fio-3.33",
      "jobs" : [
        {
          "jobname" : "w",
          "groupid" : 0,
          "error" : 0,
          "write" : {
            "io_bytes" : 8388608,
            "io_kbytes" : 8192,
            "bw_bytes" : 1198372571,
            "bw" : 1170285,
            "iops" : 1142.857143,
            "runtime" : 7
          },
          "sync" : {
            "total_ios" : 0,
            "lat_ns" : { "min" : 0, "max" : 0, "mean" : 0.000000, "stddev" : 0.000000, "N" : 0 }
          }
        }
      ]
    }"#;

    /// `fio --name=s --size=1M --bs=4k --rw=write --fdatasync=1 --ioengine=sync
    /// --output-format=json` (fio-3.33), trimmed likewise.
    const FIO_SYNC: &str = r#"{
      "fio version" : "fio-3.33",
      "jobs" : [
        {
          "jobname" : "s",
          "error" : 0,
          "write" : { "io_bytes" : 1048576, "bw_bytes" : 14979657, "runtime" : 70 },
          "sync" : {
            "total_ios" : 0,
            "lat_ns" : {
              "min" : 181880, "max" : 1509364, "mean" : 260424.207843, "stddev" : 88736.398382, "N" : 255,
              "percentile" : {
                "1.000000" : 185344, "5.000000" : 211968, "10.000000" : 218112,
                "20.000000" : 226304, "30.000000" : 236544, "40.000000" : 242688,
                "50.000000" : 250880, "60.000000" : 257024, "70.000000" : 264192,
                "80.000000" : 272384, "90.000000" : 292864, "95.000000" : 337920,
                "99.000000" : 419840, "99.500000" : 561152, "99.900000" : 1515520,
                "99.950000" : 1515520, "99.990000" : 1515520
              }
            }
          }
        }
      ]
    }"#;

    /// iperf3 -J, the documented shape of its "end" section.
    const IPERF3: &str = r#"{
      "start": { "version": "iperf 3.12", "test_start": { "protocol": "TCP", "duration": 10 } },
      "intervals": [],
      "end": {
        "streams": [],
        "sum_sent": { "start": 0, "end": 10.0, "seconds": 10.0, "bytes": 45000000000,
                      "bits_per_second": 36000000000.0, "retransmits": 0, "sender": true },
        "sum_received": { "start": 0, "end": 10.0, "seconds": 10.0, "bytes": 45000000000,
                          "bits_per_second": 36000000000.0, "sender": true }
      }
    }"#;

    #[test]
    fn fio_and_iperf3_output_parses() {
        let write = parse_fio_write(FIO_WRITE).unwrap();
        assert!((write - 1198.372571).abs() < 1e-6, "{write}");
        let (p50, p99) = parse_fio_sync(FIO_SYNC).unwrap();
        assert!((p50 - 250.88).abs() < 1e-9, "{p50}");
        assert!((p99 - 419.84).abs() < 1e-9, "{p99}");
        let loopback = parse_iperf3(IPERF3).unwrap();
        assert!((loopback - 4500.0).abs() < 1e-9, "{loopback}");
        // Notes before the JSON are skipped; two jobs are summed.
        let two = FIO_WRITE.replace(
            "\"jobs\" : [",
            "\"jobs\" : [ { \"write\": { \"bw_bytes\": 1627429 } },",
        );
        let summed = parse_fio_write(&format!("note: something\n{two}")).unwrap();
        assert!((summed - 1200.0).abs() < 1e-6, "{summed}");
    }

    #[test]
    fn malformed_output_says_what_is_missing() {
        assert!(parse_fio_write("{}").unwrap_err().contains("jobs"));
        assert!(parse_fio_write("fio: bad option")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_fio_write(r#"{"jobs": [{"read": {}}]}"#)
            .unwrap_err()
            .contains("jobs[0].write.bw_bytes"));
        assert!(parse_fio_write(r#"{"jobs": [{"error": 5}]}"#)
            .unwrap_err()
            .contains("error 5"));
        let e = parse_fio_sync(FIO_WRITE).unwrap_err();
        assert!(e.contains("jobs[0].sync.lat_ns.percentile"), "{e}");
        let no_p99 = FIO_SYNC.replace("\"99.000000\" : 419840,", "");
        assert!(parse_fio_sync(&no_p99).unwrap_err().contains("99.000000"));
        let e = parse_iperf3(r#"{"end": {"sum_sent": {}}}"#).unwrap_err();
        assert!(e.contains("end.sum_received.bits_per_second"), "{e}");
        let e = parse_iperf3(r#"{"end": {}, "error": "unable to connect"}"#).unwrap_err();
        assert!(e.contains("unable to connect"), "{e}");
        assert!(parse_iperf3(r#"{"end": "#)
            .unwrap_err()
            .contains("not valid JSON"));
    }

    /// Latencies with p75 = p50, p95 = p99, p99.99 = p99.9 and max = 2 × p99.9.
    fn percentiles(p50: u64, p99: u64, p999: u64) -> Percentiles {
        Percentiles {
            count: 1000,
            mean: p50 as f64,
            p50,
            p75: p50,
            p95: p99,
            p99,
            p999,
            p9999: p999,
            max: 2 * p999,
            curve: vec![
                (0.0, p50 / 2),
                (50.0, p50),
                (99.0, p99),
                (99.9, p999),
                (99.99, p999),
                (100.0, 2 * p999),
            ],
        }
    }

    fn sample(name: &str) -> RunResult {
        RunResult {
            format: RESULT_FORMAT,
            tool: "sluice-bench 0.1.0".into(),
            started_at_unix_s: 1_700_000_000,
            bootstrap: "127.0.0.1:9092".into(),
            broker_info: String::new(),
            broker_api_versions: vec![(0, 3, 9)],
            workload: Workload {
                name: name.into(),
                description: format!("{name}: 1 KiB messages"),
                ..Workload::default()
            },
            measured_s: 30.0,
            produce: Throughput {
                messages: 15_237_129,
                bytes: 15_600_000_000,
                msgs_per_s: 507_904.3,
                mb_per_s: 520.0,
            },
            consume: Throughput {
                messages: 15_237_129,
                bytes: 15_600_000_000,
                msgs_per_s: 507_904.3,
                mb_per_s: 520.0,
            },
            totals: Totals {
                produced: 17_000_000,
                produce_errors: 0,
                lost_after_retries: 0,
                consumed: 17_000_000,
            },
            publish_latency_us: percentiles(1234, 5678, 12000),
            publish_delay_us: Percentiles::default(),
            e2e_latency_us: percentiles(2345, 6789, 23456),
            errors: Default::default(),
            retries: Default::default(),
            backlog_max_messages: 4096,
            drain: None,
            intervals: Vec::new(),
        }
    }

    fn backlog(name: &str) -> RunResult {
        let mut result = sample(name);
        result.consume = Throughput {
            messages: 1_000_000,
            bytes: 1_024_000_000,
            msgs_per_s: 250_000.0,
            mb_per_s: 256.0,
        };
        result.drain = Some(Drain {
            backlog_messages: 1_000_000,
            backlog_bytes: 1_024_000_000,
            seconds: 4.0,
        });
        result
    }

    /// The table rows of a Markdown report, header and separator included.
    fn table_rows(md: &str) -> Vec<&str> {
        md.lines().filter(|l| l.starts_with('|')).collect()
    }

    #[test]
    fn markdown_has_one_row_per_result_with_its_figures() {
        let limits = MachineLimits {
            disk_write_mb_per_s: Some(1000.0),
            ..MachineLimits::default()
        };
        let mut empty_e2e = sample("no-consumer");
        empty_e2e.e2e_latency_us = Percentiles::default();
        let md = markdown(&[sample("latency"), backlog("backlog"), empty_e2e], &limits);
        let rows = table_rows(&md);
        assert_eq!(rows.len(), 2 + 3, "{md}");
        assert!(
            rows[0].starts_with("| workload | MB/s | msgs/s | publish p50 (ms)"),
            "{}",
            rows[0]
        );
        assert!(rows[0].ends_with("| of disk |"));
        assert_eq!(
            rows[2],
            "| latency | 520.0 | 507904 | 1.234 | 5.678 | 12.000 | 2.345 | 6.789 | 23.456 | 0.52 |"
        );
        assert_eq!(rows[3], "| backlog (drain) | 256.0 | 250000 | 1.234 | 5.678 | 12.000 | 2.345 | 6.789 | 23.456 | 0.52 |");
        assert_eq!(
            rows[4],
            "| no-consumer | 520.0 | 507904 | 1.234 | 5.678 | 12.000 | – | – | – | 0.52 |"
        );
        assert!(
            md.contains("- Disk sequential write (fio, O_DIRECT): 1000.0 MB/s"),
            "{md}"
        );
        assert!(md.contains("- Loopback TCP (iperf3): not measured"), "{md}");
        assert!(
            md.contains(
                "- **latency**: latency: 1 KiB messages ([latency plot](latency-latency.svg))"
            ),
            "{md}"
        );
    }

    #[test]
    fn of_disk_is_produce_throughput_over_disk_bandwidth() {
        let of_disk = |limits: &MachineLimits| {
            let md = markdown(&[sample("w")], limits);
            table_rows(&md)[2]
                .rsplit('|')
                .nth(1)
                .unwrap()
                .trim()
                .to_string()
        };
        let disk = |mb: f64| MachineLimits {
            disk_write_mb_per_s: Some(mb),
            ..MachineLimits::default()
        };
        assert_eq!(of_disk(&disk(2000.0)), "0.26");
        assert_eq!(of_disk(&disk(400.0)), "1.30");
        assert_eq!(of_disk(&MachineLimits::default()), "–");
        assert_eq!(of_disk(&disk(0.0)), "–");
    }

    #[test]
    fn summary_is_aligned_and_shows_the_drain() {
        let text = summary_table(&backlog("backlog"));
        let latency: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("latency (ms)"))
            .take(4)
            .collect();
        assert_eq!(latency.len(), 4, "{text}");
        assert!(latency[0].ends_with("p99.9  p99.99     max"), "{text}");
        assert!(
            latency
                .iter()
                .all(|l| l.chars().count() == latency[0].chars().count()),
            "{text}"
        );
        assert!(
            latency[1].starts_with("publish latency") && latency[1].contains(" 1.234 "),
            "{text}"
        );
        assert!(latency[1].ends_with("24.000"), "{text}");
        assert!(
            latency[2].starts_with("publish delay") && latency[2].ends_with('–'),
            "{text}"
        );
        assert!(text.contains("507904"), "{text}");
        assert!(
            text.contains(
                "drain: 1000000 messages (1024.0 MB) in 4.000 s = 250000 msgs/s, 256.00 MB/s"
            ),
            "{text}"
        );
        assert!(!summary_table(&sample("w")).contains("drain"));
        assert!(!summary_table(&sample("w")).contains("retries"));
    }

    #[test]
    fn retries_and_messages_lost_after_them_are_shown() {
        let mut result = sample("failover");
        result.retries = [
            ("NOT_LEADER_OR_FOLLOWER".to_string(), 12),
            ("NOT_COORDINATOR".to_string(), 3),
        ]
        .into();
        result.totals.produce_errors = 7;
        result.totals.lost_after_retries = 5;
        let text = summary_table(&result);
        assert!(
            text.contains("\nretries: NOT_COORDINATOR 3, NOT_LEADER_OR_FOLLOWER 12\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "lost after retries: 5 messages (retried for delivery_timeout_ms = 120000 ms)"
            ),
            "{text}"
        );
        let md = markdown(&[result], &MachineLimits::default());
        assert!(
            md.contains("(failover-latency.svg)); retries: NOT_COORDINATOR 3, NOT_LEADER_OR_FOLLOWER 12; lost after retries: 5 messages"),
            "{md}"
        );
    }

    /// Tags nest and close, and every `&` starts an entity.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("a tag is closed");
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    open.pop(),
                    Some(name.trim()),
                    "</{name}> closes the wrong tag"
                );
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().expect("a tag name"));
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed tags: {open:?}");
        for (i, _) in svg.match_indices('&') {
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| svg[i..].starts_with(e)),
                "unescaped & at {i}: {}",
                &svg[i..(i + 20).min(svg.len())]
            );
        }
    }

    #[test]
    fn the_svg_has_one_line_per_series_and_escapes_text() {
        let mut result = sample("a&b<c>");
        let svg = latency_svg(&result);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_well_formed(&svg);
        assert!(svg.contains("a&amp;b&lt;c&gt;"));
        // Publish delay is empty: two lines.
        assert_eq!(
            svg.matches("<polyline").count() + svg.matches("<path").count(),
            2,
            "{svg}"
        );
        for tick in ["99.9", "99.999"] {
            assert!(svg.contains(&format!(">{tick}</text>")), "{tick}");
        }

        result.publish_delay_us = percentiles(0, 0, 0);
        assert_eq!(
            latency_svg(&result).matches("<polyline").count(),
            2,
            "all-zero delay is skipped"
        );
        result.publish_delay_us = percentiles(10, 300, 900);
        let svg = latency_svg(&result);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("publish delay"));
        // The y axis spans the decades from 0.005 ms (p0 of the delay) to 46.9 ms (max e2e).
        assert!(
            svg.contains(">0.001</text>") && svg.contains(">100</text>"),
            "{svg}"
        );
        assert!(!svg.contains(">1000</text>"));

        result.publish_latency_us = Percentiles::default();
        result.publish_delay_us = Percentiles::default();
        result.e2e_latency_us = Percentiles::default();
        let svg = latency_svg(&result);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert!(svg.contains("no latency samples"));
    }

    #[test]
    fn write_report_writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        let limits = MachineLimits {
            disk_write_mb_per_s: Some(1198.5),
            loopback_mb_per_s: Some(4500.0),
            ..Default::default()
        };
        let results = [sample("a"), sample("b"), backlog("a")];
        let paths = write_report(&out, &results, &limits).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "report.md",
                "a-latency.svg",
                "b-latency.svg",
                "a-2-latency.svg",
                "machine.json"
            ]
        );
        assert!(paths.iter().all(|p| p.is_file()));
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        for needle in [
            "| a |",
            "| b |",
            "| a (drain) |",
            "(a-2-latency.svg)",
            "(b-latency.svg)",
        ] {
            assert!(md.contains(needle), "{needle} in {md}");
        }
        let machine: MachineLimits =
            serde_json::from_str(&std::fs::read_to_string(out.join("machine.json")).unwrap())
                .unwrap();
        assert_eq!(machine, limits);
    }

    #[test]
    fn read_result_checks_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        std::fs::write(&path, serde_json::to_string(&sample("w")).unwrap()).unwrap();
        let back = read_result(&path).unwrap();
        assert_eq!(back.workload.name, "w");
        assert_eq!(back.e2e_latency_us, sample("w").e2e_latency_us);

        let mut old = sample("w");
        old.format = RESULT_FORMAT + 1;
        std::fs::write(&path, serde_json::to_string(&old).unwrap()).unwrap();
        let e = read_result(&path).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(&format!("format {}", RESULT_FORMAT + 1)), "{e}");

        std::fs::write(&path, r#"{"tool": "x"}"#).unwrap();
        assert!(read_result(&path).unwrap_err().contains("no \"format\""));
        let e = read_result(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.contains("missing.json"), "{e}");
    }
}
