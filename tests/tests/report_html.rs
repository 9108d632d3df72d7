//! The `shadowctl report --html` page in a real browser: headless Chromium renders it (no network,
//! no script), the screenshot must show a drawn page with both latency series, and the DOM must
//! hold every endpoint, the hostile one as text rather than markup.
//!
//! Needs the `chromium` binary (Debian package `chromium`); skipped without it unless
//! SHADOW_REQUIRE_KERNEL=1.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bytes::Bytes;
use shadow_daemon::compare::{
    Comparator, CompareSettings, PRIMARY_COLOUR, Report, ResponseSample, SHADOW_COLOUR, Verdict,
};

const HOSTILE: &str = "GET /<b id=\"injected\">x</b>&<script>document.title='pwned'</script>";
const ENDPOINTS: [&str; 3] = ["GET /api/users/:id", "POST /api/orders", HOSTILE];
/// An egress finding whose process name carries markup.
const FINDING: &str = "rule api: the shadow tried to reach 203.0.113.9:443 (tcp) 3 time(s): refused, first by <i id=\"inj2\">x</i> (pid 7)";

fn response(status: u16, body: &str, latency_us: u64) -> ResponseSample {
    ResponseSample {
        status,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::copy_from_slice(body.as_bytes()),
        body_complete: true,
        body_len: body.len() as u64,
        latency: Some(Duration::from_micros(latency_us)),
    }
}

/// Three endpoints with distinct latency shapes; the shadow is slower on the second.
fn report() -> Report {
    let mut c = Comparator::new(&CompareSettings::default()).expect("default settings");
    for i in 0..400u64 {
        let body = format!("{{\"id\":{i}}}");
        let base = 2_000 + (i * 37) % 8_000;
        c.observe(ENDPOINTS[0], &response(200, &body, base), &response(200, &body, base + 300));
        c.observe(ENDPOINTS[1], &response(201, &body, base * 2), &response(201, &body, base * 4));
        if i < 50 {
            c.observe(ENDPOINTS[2], &response(200, &body, base), &response(200, "{}", base / 2));
        }
    }
    let r = c.report();
    assert_eq!(r.endpoints.len(), 3);
    assert_eq!(r.verdict, Verdict::Fail, "the slow shadow endpoint fails its p99 gate");
    r
}

fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadow-report-html-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn chromium(dir: &Path, args: &[&str]) -> std::process::Output {
    let profile = format!("--user-data-dir={}", dir.join("profile").display());
    let out = Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg("--disable-extensions")
        .arg(profile)
        .args(args)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).expect("colour");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// Escaped as the DOM serialiser writes text content.
fn as_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[test]
fn report_html_renders_in_headless_chromium() {
    if !shadow_tests::require_tool("report_html_renders_in_headless_chromium", "chromium") {
        return;
    }
    let dir = scratch_dir();
    let page = dir.join("report.html");
    std::fs::write(&page, report().render_html_with(&[FINDING.to_owned()])).expect("write page");
    let url = format!("file://{}", page.display());

    let shot = dir.join("shot.png");
    chromium(&dir, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,1300", &url]);
    let decoder = png::Decoder::new(std::fs::File::open(&shot).expect("screenshot written"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    assert_eq!((info.width, info.height), (1200, 1300));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "colour screenshot expected, got {:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()].chunks_exact(channels).map(|p| [p[0], p[1], p[2]]).collect();
    let first = pixels[0];
    let differing = pixels.iter().filter(|p| **p != first).count();
    assert!(differing > pixels.len() / 100, "the screenshot is (nearly) blank: {differing} pixels differ");
    let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 6);
    for (name, colour) in [("primary", PRIMARY_COLOUR), ("shadow", SHADOW_COLOUR)] {
        let want = rgb(colour);
        let n = pixels.iter().filter(|p| near(**p, want)).count();
        assert!(n >= 100, "{name} series colour {colour} on only {n} pixels");
    }

    let dom = String::from_utf8(chromium(&dir, &["--dump-dom", &url]).stdout).expect("DOM is UTF-8");
    assert!(dom.contains("id=\"verdicts\""), "verdict table missing");
    for e in ENDPOINTS {
        assert!(dom.contains(&as_text(e)), "endpoint {e:?} missing from the DOM");
    }
    assert_eq!(dom.matches("<section class=\"endpoint\"").count(), ENDPOINTS.len());
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), ENDPOINTS.len());
    assert!(!dom.contains("<b id="), "markup from an endpoint name became an element");
    assert!(dom.contains("id=\"findings\"") && dom.contains(&as_text(FINDING)), "the egress finding is shown, as text");
    assert!(!dom.contains("<i id="), "markup from a finding became an element");
    assert!(!dom.contains("<script"), "a script element reached the DOM");
    assert!(dom.contains("<title>shadow report: FAIL</title>"), "title changed or missing");
    if std::env::var_os("SHADOW_KEEP_REPORT").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
