//! The Prometheus text format 0.0.4 from prometheus-client's OpenMetrics output.
//!
//! The two differ in what matters here only for counters (OpenMetrics names the family without
//! `_total` in HELP/TYPE, 0.0.4 with it), the `# UNIT` lines and the `# EOF` terminator. Scrapers
//! that ask for OpenMetrics get it as prometheus-client writes it; everything else (promtool,
//! curl, older agents) gets 0.0.4.

pub(crate) fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // HELP comes before TYPE, and only TYPE tells whether the name needs `_total`.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, pending_help.take(), "");
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" && !name.ends_with("_total") { "_total" } else { "" };
            match pending_help.take() {
                Some(h) if h.0 == name => flush_help(&mut out, Some(h), suffix),
                other => flush_help(&mut out, other, ""),
            }
            // OpenMetrics types without a 0.0.4 counterpart are published as what they expose.
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            // Not part of the 0.0.4 format.
            continue;
        } else {
            flush_help(&mut out, pending_help.take(), "");
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, pending_help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push_str(suffix);
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_and_openmetrics_only_lines_go() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total 3\n\
                  # HELP g Gauge.\n# TYPE g gauge\ng{x=\"1\"} 2\n# HELP h_seconds H.\n# TYPE h_seconds histogram\n\
                  h_seconds_sum 0.5\nh_seconds_count 1\nh_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total 3\n\
             # HELP g Gauge.\n# TYPE g gauge\ng{x=\"1\"} 2\n# HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_sum 0.5\nh_seconds_count 1\nh_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
