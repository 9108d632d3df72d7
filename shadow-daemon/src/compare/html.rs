//! `shadowctl report --html FILE`: one self-contained page (inline CSS, inline SVG drawn here, no
//! script, nothing fetched) with the verdict table and, per endpoint, the primary's and the
//! shadow's latency distributions as percentile curves. Written with `maud`, which escapes every
//! interpolated value (endpoint names and learned paths come from the wire); only the constant
//! style sheet goes in unescaped.

use std::borrow::Cow;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{
    report::{EndpointReport, Report, interval_text, latency_note, side_ms},
    summary::LatencySummary,
    verdict::Verdict,
};

/// Series colours, also used by the headless-browser test to find the curves.
pub const PRIMARY_COLOUR: &str = "#1f77b4";
pub const SHADOW_COLOUR: &str = "#ff7f0e";

const W: f64 = 720.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;
/// The x axis is -log10(1 - p): 0 at p0, 1 at p90, 2 at p99 ... 5 at p100 (capped there).
const X_DECADES: f64 = 5.0;

/// Text from the wire with control characters (a parse error in HTML, and invisible) shown as
/// U+FFFD; the escaping itself is maud's.
fn shown(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect())
    } else {
        Cow::Borrowed(s)
    }
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Insufficient => "insufficient",
    }
}

/// One decimal, as SVG coordinates are written.
fn c1(v: f64) -> String {
    format!("{v:.1}")
}

impl Report {
    pub fn render_html(&self) -> String {
        self.render_html_with(&[])
    }

    /// The page with `findings` first, one line each: what an operator must read before
    /// promoting whatever the verdict, such as the destinations a fenced shadow tried to reach
    /// outside its allowlist.
    pub fn render_html_with(&self, findings: &[String]) -> String {
        let v = self.verdict;
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
                    title { "shadow report: " (v.as_str()) }
                    style { (PreEscaped(CSS)) }
                }
                body {
                    h1 { "shadow report: " span.badge.(verdict_class(v)) #verdict { (v.as_str()) } }
                    p {
                        (self.endpoints.len()) " endpoints, " (self.overall.samples) " compared pairs; exit code "
                        (v.exit_code()) "."
                    }
                    @if !findings.is_empty() {
                        section id="findings" class="findings" {
                            h2 { "Findings to read before promoting" }
                            ul { @for f in findings { li { (shown(f)) } } }
                        }
                    }
                    @if let Some(e) = &self.epoch {
                        p #epoch data-epoch=(e.number) data-reason=(e.reason.as_str()) {
                            "Figures of " (shown(&e.describe())) "."
                        }
                    }
                    @if self.overflow_pairs > 0 {
                        p { (self.overflow_pairs) " pairs past the endpoint cap are counted under 'other'." }
                    }
                    table #verdicts {
                        thead { tr {
                            th { "Endpoint" } th { "Samples" } th { "Status match" } th { "Body match" }
                            th { "Length only" } th { "5xx primary / shadow" } th { "p50 ms P / S" }
                            th { "p95 ms P / S" } th { "p99 ms P / S" } th { "p50 ratio" } th { "p99 ratio" }
                            th { "Verdict" } th { "Why" }
                        } }
                        tbody { @for e in &self.endpoints { (table_row(e)) } }
                    }
                    @for (i, e) in self.endpoints.iter().enumerate() {
                        (endpoint_section(i, e))
                    }
                }
            }
        };
        let mut out = page.into_string();
        out.push('\n');
        out
    }
}

fn endpoint_section(i: usize, e: &EndpointReport) -> Markup {
    let name = shown(&e.summary.endpoint);
    let n = &e.summary.noise;
    html! {
        section.endpoint id=(format_args!("endpoint-{i}")) data-endpoint=(name) {
            h2 { (name) " " span.badge.(verdict_class(e.verdict.verdict())) { (e.verdict.as_str()) } }
            (chart(&e.summary.latency))
            @if let Some(note) = latency_note(&e.summary) {
                p.latency { "Latency gates: " (shown(&note)) "." }
            }
            @if n.samples > 0 {
                p {
                    "Noise learned from " (n.samples) " primary/secondary pairs: "
                    @if n.learned.is_empty() {
                        "none."
                    } @else {
                        @for (k, l) in n.learned.iter().enumerate() {
                            @if k > 0 { ", " }
                            code { (shown(&l.path)) } (format_args!(" ({:.0}%)", l.differed_percent))
                        }
                    }
                }
            }
            @if !e.traces.is_empty() {
                table.traces {
                    caption {
                        "Mismatching pairs and their traces (production, and the shadow's restarted one)"
                    }
                    thead { tr {
                        th { "Pair" } th { "Outcome" } th { "Format" } th { "Production trace" } th { "Shadow trace" }
                    } }
                    tbody {
                        @for t in &e.traces {
                            tr {
                                td { "#" (t.seq) } td { (t.outcome.as_str()) } td { (t.ids.format.as_str()) }
                                td { code { (shown(&t.ids.production)) } } td { code { (shown(&t.ids.shadow)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn table_row(e: &EndpointReport) -> Markup {
    let s = &e.summary;
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}%"));
    let l = &s.latency;
    let pair =
        |a: f64, b: f64| format!("{} / {}", side_ms(&l.primary, 0, a, 2), side_ms(&l.shadow, l.shadow_untimed, b, 2));
    let ratio = |point: Option<f64>, i: &Option<crate::compare::QuantileInterval>| {
        let point = point.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        match i {
            Some(i) => format!("{point} {}", interval_text(i, i.ratio, i.primary.samples.min(i.shadow.samples))),
            None => point,
        }
    };
    html! {
        tr {
            td.name { (shown(&s.endpoint)) }
            td { (s.samples) }
            td { (pct(s.status_match_percent)) }
            td { (pct(s.body_match_percent)) }
            td { (s.length_only) }
            td { (format_args!("{:.2}% / {:.2}%", s.primary_5xx_percent, s.shadow_error_percent)) }
            td { (pair(l.primary.p50_ms, l.shadow.p50_ms)) }
            td { (pair(l.primary.p95_ms, l.shadow.p95_ms)) }
            td { (pair(l.primary.p99_ms, l.shadow.p99_ms)) }
            td { (ratio(l.p50_ratio, &l.p50_interval)) }
            td { (ratio(l.p99_ratio, &l.p99_interval)) }
            td class=(verdict_class(e.verdict.verdict())) { (e.verdict.as_str()) }
            td.why { (shown(&e.verdict.reason())) }
        }
    }
}

fn x_of(percentile: f64) -> f64 {
    let tail = (1.0 - percentile / 100.0).max(10f64.powf(-X_DECADES));
    let decades = (-tail.log10()).clamp(0.0, X_DECADES);
    LEFT + decades / X_DECADES * (W - LEFT - RIGHT)
}

/// A round step giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    // raw < 10 * mag, so past 5 * mag the next round step is 10 * mag.
    [1.0, 2.0, 5.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn chart(l: &LatencySummary) -> Markup {
    let finite = |c: &[[f64; 2]]| c.iter().map(|p| p[1]).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let top = finite(&l.primary_curve).max(finite(&l.shadow_curve)).max(0.001);
    let step = tick_step(top);
    let ymax = (top / step).ceil() * step;
    let y_of = |ms: f64| H - BOTTOM - (ms.clamp(0.0, ymax) / ymax) * (H - TOP - BOTTOM);
    let ticks: Vec<f64> =
        std::iter::successors(Some(0.0), |t| Some(t + step)).take_while(|t| *t <= ymax + step / 2.0).collect();
    let marks = [(0.0, "p0"), (90.0, "p90"), (99.0, "p99"), (99.9, "p99.9"), (99.99, "p99.99"), (100.0, "max")];
    let (b, cx, cy) = (H - BOTTOM, (LEFT + W - RIGHT) / 2.0, (TOP + H - BOTTOM) / 2.0);
    let series = [(&l.primary_curve, PRIMARY_COLOUR, "primary"), (&l.shadow_curve, SHADOW_COLOUR, "shadow")];
    let points = |curve: &[[f64; 2]]| {
        curve
            .iter()
            .filter(|p| p[0].is_finite() && p[1].is_finite())
            .map(|p| format!("{:.1},{:.1}", x_of(p[0]), y_of(p[1])))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let summary = |c: &[[f64; 2]], name: &str, p99: f64| {
        if c.is_empty() { format!("{name}: no data") } else { format!("{name} (p99 {p99:.2} ms)") }
    };
    let lx = LEFT + 14.0;
    html! {
        svg.chart width=(W) height=(H) viewBox=(format_args!("0 0 {W} {H}")) role="img"
            aria-label="latency distribution, primary and shadow" {
            rect x="0" y="0" width=(W) height=(H) fill="#ffffff" {}
            // Grid and y ticks.
            @for t in &ticks {
                line x1=(LEFT) x2=(W - RIGHT) y1=(c1(y_of(*t))) y2=(c1(y_of(*t))) stroke="#dddddd" {}
                text x=(LEFT - 6.0) y=(c1(y_of(*t) + 4.0)) text-anchor="end" class="tick" { (trim_number(*t)) }
            }
            @for (p, label) in marks {
                line x1=(c1(x_of(p))) x2=(c1(x_of(p))) y1=(TOP) y2=(b) stroke="#eeeeee" {}
                text x=(c1(x_of(p))) y=(b + 16.0) text-anchor="middle" class="tick" { (label) }
            }
            line x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(b) stroke="#333333" {}
            line x1=(LEFT) x2=(W - RIGHT) y1=(b) y2=(b) stroke="#333333" {}
            text x=(cx) y=(H - 8.0) text-anchor="middle" class="axis" { "percentile" }
            text x="16" y=(cy) text-anchor="middle" class="axis" transform=(format_args!("rotate(-90 16 {cy})")) {
                "latency (ms)"
            }
            @for (curve, colour, class) in series {
                @if !curve.is_empty() {
                    polyline class=(class) points=(points(curve)) fill="none" stroke=(colour) stroke-width="3"
                        stroke-linejoin="round" {}
                }
            }
            // Legend, with solid swatches.
            rect x=(lx) y=(TOP + 6.0) width="18" height="10" fill=(PRIMARY_COLOUR) {}
            text x=(lx + 24.0) y=(TOP + 15.0) class="legend" { (summary(&l.primary_curve, "primary", l.primary.p99_ms)) }
            rect x=(lx) y=(TOP + 24.0) width="18" height="10" fill=(SHADOW_COLOUR) {}
            text x=(lx + 24.0) y=(TOP + 33.0) class="legend" { (summary(&l.shadow_curve, "shadow", l.shadow.p99_ms)) }
        }
    }
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}\
.findings{border:2px solid #c62828;background:#fff3f3;padding:4px 12px;margin:12px 0}.findings h2{color:#c62828;font-size:16px}\
table{border-collapse:collapse;margin:12px 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
td{white-space:nowrap}td.name{text-align:left;font-family:monospace;white-space:normal;max-width:280px;word-break:break-all}td.why{text-align:left;white-space:normal;max-width:260px}th{background:#f3f3f3}\
.badge{padding:2px 8px;border-radius:4px;color:#fff}.badge.pass{background:#2e7d32}\
.badge.fail{background:#c62828}.badge.insufficient{background:#757575}\
td.pass{color:#2e7d32;font-weight:bold}td.fail{color:#c62828;font-weight:bold}td.insufficient{color:#757575}\
section.endpoint{margin-top:28px}h2{font-family:monospace;font-size:1.1em}\
.tick{font-size:11px;fill:#555}.axis{font-size:12px;fill:#222}.legend{font-size:12px;fill:#222}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_come_first_escaped_and_only_when_there_are_some() {
        let r = super::super::Comparator::new(&super::super::CompareSettings::default()).expect("settings").report();
        assert!(!r.render_html().contains("id=\"findings\""));
        let page = r.render_html_with(&["tried 10.0.0.9:443 <b>x</b>".to_owned(), "second".to_owned()]);
        let at = page.find("<section id=\"findings\"").expect("a findings section");
        assert!(at < page.find("<table id=\"verdicts\"").expect("the table"), "before the verdict table");
        assert!(page.contains("<li>tried 10.0.0.9:443 &lt;b&gt;x&lt;/b&gt;</li><li>second</li>"), "{page}");
    }

    #[test]
    fn wire_text_is_escaped_in_content_and_attributes() {
        let hostile = "GET /<script>alert('x')</script>&\"\u{0}";
        let mut c = super::super::Comparator::new(&super::super::CompareSettings::default()).expect("settings");
        let sample = super::super::ResponseSample {
            status: 200,
            headers: vec![],
            body: bytes::Bytes::from_static(b"{}"),
            body_complete: true,
            body_len: 2,
            latency: Some(std::time::Duration::from_millis(1)),
        };
        c.observe(hostile, &sample, &sample);
        let page = c.report().render_html();
        let want = "GET /&lt;script&gt;alert('x')&lt;/script&gt;&amp;&quot;\u{fffd}";
        assert!(page.contains(&format!("data-endpoint=\"{want}\"")), "{page}");
        assert!(page.contains(&format!("<td class=\"name\">{want}</td>")), "{page}");
        assert!(!page.contains("<script>") && !page.contains('\u{0}'));
    }

    #[test]
    fn axes_map_percentiles_by_decade() {
        let span = W - LEFT - RIGHT;
        assert!((x_of(0.0) - LEFT).abs() < 1e-9);
        assert!((x_of(90.0) - (LEFT + span / 5.0)).abs() < 1e-6);
        assert!((x_of(99.0) - (LEFT + 2.0 * span / 5.0)).abs() < 1e-6);
        assert!((x_of(100.0) - (W - RIGHT)).abs() < 1e-6);
        assert_eq!(tick_step(9.0), 2.0);
        assert_eq!(tick_step(0.3), 0.1);
        assert_eq!(tick_step(1234.0), 500.0);
        // Past five times the magnitude: the next decade.
        assert_eq!(tick_step(30.0), 10.0);
    }
}
