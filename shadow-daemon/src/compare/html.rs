//! `shadowctl report --html FILE`: one self-contained page (inline CSS, inline SVG drawn here, no
//! script, nothing fetched) with the verdict table and, per endpoint, the primary's and the
//! shadow's latency distributions as percentile curves. Every text from the wire (endpoint
//! names, learned paths) is escaped.

use std::fmt::Write as _;

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

/// Text safe in HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Insufficient => "insufficient",
    }
}

impl Report {
    pub fn render_html(&self) -> String {
        self.render_html_with(&[])
    }

    /// The page with `findings` first, one line each (escaped): what an operator must read
    /// before promoting whatever the verdict, such as the destinations a fenced shadow tried to
    /// reach outside its allowlist.
    pub fn render_html_with(&self, findings: &[String]) -> String {
        let mut o = String::new();
        let v = self.verdict;
        let _ = write!(
            o,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>shadow report: {}</title><style>{CSS}</style></head><body>\
             <h1>shadow report: <span class=\"badge {}\" id=\"verdict\">{}</span></h1>\
             <p>{} endpoints, {} compared pairs; exit code {}.</p>",
            v.as_str(),
            verdict_class(v),
            v.as_str(),
            self.endpoints.len(),
            self.overall.samples,
            v.exit_code()
        );
        if !findings.is_empty() {
            o.push_str("<section id=\"findings\" class=\"findings\"><h2>Findings to read before promoting</h2><ul>");
            for f in findings {
                let _ = write!(o, "<li>{}</li>", escape(f));
            }
            o.push_str("</ul></section>");
        }
        if let Some(e) = &self.epoch {
            let _ = write!(
                o,
                "<p id=\"epoch\" data-epoch=\"{}\" data-reason=\"{}\">Figures of {}.</p>",
                e.number,
                e.reason.as_str(),
                escape(&e.describe())
            );
        }
        if self.overflow_pairs > 0 {
            let _ = write!(o, "<p>{} pairs past the endpoint cap are counted under 'other'.</p>", self.overflow_pairs);
        }
        o.push_str(
            "<table id=\"verdicts\"><thead><tr><th>Endpoint</th><th>Samples</th><th>Status match</th>\
             <th>Body match</th><th>Length only</th><th>5xx primary / shadow</th><th>p50 ms P / S</th>\
             <th>p95 ms P / S</th><th>p99 ms P / S</th><th>p50 ratio</th><th>p99 ratio</th><th>Verdict</th><th>Why</th></tr></thead><tbody>",
        );
        for e in &self.endpoints {
            table_row(&mut o, e);
        }
        o.push_str("</tbody></table>");
        for (i, e) in self.endpoints.iter().enumerate() {
            let name = escape(&e.summary.endpoint);
            let _ = write!(
                o,
                "<section class=\"endpoint\" id=\"endpoint-{i}\" data-endpoint=\"{name}\"><h2>{name} \
                 <span class=\"badge {}\">{}</span></h2>",
                verdict_class(e.verdict.verdict()),
                e.verdict.as_str()
            );
            chart(&mut o, &e.summary.latency);
            if let Some(note) = latency_note(&e.summary) {
                let _ = write!(o, "<p class=\"latency\">Latency gates: {}.</p>", escape(&note));
            }
            let n = &e.summary.noise;
            if n.samples > 0 {
                let _ = write!(o, "<p>Noise learned from {} primary/secondary pairs: ", n.samples);
                if n.learned.is_empty() {
                    o.push_str("none.");
                } else {
                    let list: Vec<String> = n
                        .learned
                        .iter()
                        .map(|l| format!("<code>{}</code> ({:.0}%)", escape(&l.path), l.differed_percent))
                        .collect();
                    o.push_str(&list.join(", "));
                }
                o.push_str("</p>");
            }
            if !e.traces.is_empty() {
                o.push_str(
                    "<table class=\"traces\"><caption>Mismatching pairs and their traces (production, and the \
                     shadow's restarted one)</caption><thead><tr><th>Pair</th><th>Outcome</th><th>Format</th>\
                     <th>Production trace</th><th>Shadow trace</th></tr></thead><tbody>",
                );
                for t in &e.traces {
                    let _ = write!(
                        o,
                        "<tr><td>#{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                        t.seq,
                        t.outcome.as_str(),
                        t.ids.format.as_str(),
                        escape(&t.ids.production),
                        escape(&t.ids.shadow)
                    );
                }
                o.push_str("</tbody></table>");
            }
            o.push_str("</section>");
        }
        o.push_str("</body></html>\n");
        o
    }
}

fn table_row(o: &mut String, e: &EndpointReport) {
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
    let _ = write!(
        o,
        "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}% / {:.2}%</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"why\">{}</td></tr>",
        escape(&s.endpoint),
        s.samples,
        pct(s.status_match_percent),
        pct(s.body_match_percent),
        s.length_only,
        s.primary_5xx_percent,
        s.shadow_error_percent,
        pair(l.primary.p50_ms, l.shadow.p50_ms),
        pair(l.primary.p95_ms, l.shadow.p95_ms),
        pair(l.primary.p99_ms, l.shadow.p99_ms),
        ratio(l.p50_ratio, &l.p50_interval),
        ratio(l.p99_ratio, &l.p99_interval),
        verdict_class(e.verdict.verdict()),
        e.verdict.as_str(),
        escape(&e.verdict.reason())
    );
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

fn chart(o: &mut String, l: &LatencySummary) {
    let finite = |c: &[[f64; 2]]| c.iter().map(|p| p[1]).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let top = finite(&l.primary_curve).max(finite(&l.shadow_curve)).max(0.001);
    let step = tick_step(top);
    let ymax = (top / step).ceil() * step;
    let y_of = |ms: f64| H - BOTTOM - (ms.clamp(0.0, ymax) / ymax) * (H - TOP - BOTTOM);
    let _ = write!(
        o,
        "<svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" aria-label=\"latency distribution, primary and shadow\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>"
    );
    // Grid and y ticks.
    let mut t = 0.0;
    while t <= ymax + step / 2.0 {
        let y = y_of(t);
        let _ = write!(
            o,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" class=\"tick\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            trim_number(t)
        );
        t += step;
    }
    for (p, label) in [(0.0, "p0"), (90.0, "p90"), (99.0, "p99"), (99.9, "p99.9"), (99.99, "p99.99"), (100.0, "max")] {
        let x = x_of(p);
        let _ = write!(
            o,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#eeeeee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" class=\"tick\">{label}</text>",
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    let _ = write!(
        o,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{b}\" stroke=\"#333333\"/>\
         <line x1=\"{LEFT}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\" stroke=\"#333333\"/>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" class=\"axis\">percentile</text>\
         <text x=\"16\" y=\"{cy}\" text-anchor=\"middle\" class=\"axis\" transform=\"rotate(-90 16 {cy})\">latency (ms)</text>",
        H - 8.0,
        b = H - BOTTOM,
        r = W - RIGHT,
        cx = (LEFT + W - RIGHT) / 2.0,
        cy = (TOP + H - BOTTOM) / 2.0
    );
    for (curve, colour, class) in
        [(&l.primary_curve, PRIMARY_COLOUR, "primary"), (&l.shadow_curve, SHADOW_COLOUR, "shadow")]
    {
        if curve.is_empty() {
            continue;
        }
        let points: Vec<String> = curve
            .iter()
            .filter(|p| p[0].is_finite() && p[1].is_finite())
            .map(|p| format!("{:.1},{:.1}", x_of(p[0]), y_of(p[1])))
            .collect();
        let _ = write!(
            o,
            "<polyline class=\"{class}\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"3\" \
             stroke-linejoin=\"round\"/>",
            points.join(" ")
        );
    }
    // Legend, with solid swatches.
    let lx = LEFT + 14.0;
    let summary = |c: &[[f64; 2]], name: &str, p99: f64| {
        if c.is_empty() { format!("{name}: no data") } else { format!("{name} (p99 {p99:.2} ms)") }
    };
    let _ = write!(
        o,
        "<rect x=\"{lx}\" y=\"{}\" width=\"18\" height=\"10\" fill=\"{PRIMARY_COLOUR}\"/>\
         <text x=\"{}\" y=\"{}\" class=\"legend\">{}</text>\
         <rect x=\"{lx}\" y=\"{}\" width=\"18\" height=\"10\" fill=\"{SHADOW_COLOUR}\"/>\
         <text x=\"{}\" y=\"{}\" class=\"legend\">{}</text></svg>",
        TOP + 6.0,
        lx + 24.0,
        TOP + 15.0,
        summary(&l.primary_curve, "primary", l.primary.p99_ms),
        TOP + 24.0,
        lx + 24.0,
        TOP + 33.0,
        summary(&l.shadow_curve, "shadow", l.shadow.p99_ms)
    );
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
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("GET /<script>alert('x')</script>&\""),
            "GET /&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(escape("a\u{0}b"), "a\u{fffd}b");
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
