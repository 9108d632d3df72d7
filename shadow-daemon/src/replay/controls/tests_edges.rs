//! The controls' edges, exactly: which bytes a token or a header value may hold, what a header
//! field shows in logs, a body at the cap, names at their length limits, the rate limit's burst.

use super::{headers::is_token, target::ShadowTarget, *};

#[test]
fn tokens_are_rfc_9110_tchars_only() {
    for ok in ["a", "Z", "0", "X-Env", "!#$%&'*+-.^_`|~", "GET"] {
        assert!(is_token(ok.as_bytes()), "{ok}");
    }
    for bad in
        ["", " ", "a b", "a:b", "a/b", "(", ")", ",", ";", "<", "=", ">", "?", "@", "[", "\\", "]", "{", "}", "\""]
    {
        assert!(!is_token(bad.as_bytes()), "{bad:?}");
    }
    assert!(!is_token("é".as_bytes()));
    assert!(!is_token(b"a\x7f"));
}

#[test]
fn header_values_refuse_control_bytes_but_keep_tabs_and_spaces() {
    let h = HeaderField::parse("X-A: a\tb c~").unwrap();
    assert_eq!(h.value, "a\tb c~");
    assert_eq!(format!("{h:?}"), "X-A: <6 bytes>", "the value is never shown");
    assert_eq!(HeaderName::parse("  X-B ").unwrap().to_string(), "X-B");
    assert_eq!(HeaderField::parse("X-A: a\x7fb").unwrap_err(), "header X-A: the value contains the control byte 0x7f");
    assert_eq!(HeaderField::parse("X-A: a\x1fb").unwrap_err(), "header X-A: the value contains the control byte 0x1f");
    assert_eq!(HeaderField::parse("X-A: a\0").unwrap_err(), "header X-A: the value contains the control byte 0x00");
    assert_eq!(HeaderField::parse("X A: b").unwrap_err(), "'X A' is not a header name (expected 'Name: value')");
    assert!(HeaderName::parse("x-a").unwrap().matches(b"X-A"));
    assert!(!HeaderName::parse("x-a").unwrap().matches(b"X-AB"));
}

#[test]
fn host_suffix_takes_name_characters_only() {
    assert_eq!("suffix:a-b_c.d9".parse(), Ok(HostMode::Suffix("a-b_c.d9".into())));
    for bad in ["suffix:a/b", "suffix:a:b", "suffix:é"] {
        assert_eq!(
            bad.parse::<HostMode>(),
            Err(format!("'{bad}': the suffix must be letters, digits, '-', '_' or '.'"))
        );
    }
    assert_eq!(" keep ".parse(), Ok(HostMode::Keep));
}

#[test]
fn methods_are_the_safe_default_plus_each_extra_once() {
    let m = MethodAllowlist::with_extra(&["POST".into(), "GET".into(), "POST".into()]);
    assert_eq!(m.methods(), ["GET", "HEAD", "OPTIONS", "POST"]);
    assert_eq!(MethodAllowlist::default().methods(), DEFAULT_METHODS);
    assert_eq!(MethodAllowlist::parse_method(" patch "), Ok("PATCH".into()));
    assert_eq!(MethodAllowlist::parse_method("GE T"), Err("'GE T' is not an HTTP method".into()));
}

#[test]
fn a_body_at_the_cap_is_replayed_one_byte_more_is_not() {
    let c = ReplayControls { max_body_bytes: 4, ..Default::default() };
    assert_eq!(c.refuse(b"GET", b"/", 4), None);
    assert_eq!(c.refuse(b"GET", b"/", 5), Some(RequestDrop::BodyTooLarge));
    // No patterns: every path passes, whatever it looks like.
    assert_eq!(ReplayControls::default().refuse(b"GET", b"/admin/../x", 0), None);
}

#[test]
fn path_rules_deny_first_then_require_an_allow() {
    let deny_only = ReplayControls { deny_paths: vec![PathPattern::parse("/admin").unwrap()], ..Default::default() };
    assert_eq!(deny_only.refuse(b"GET", b"/public", 0), None);
    assert_eq!(deny_only.refuse(b"GET", b"/admin", 0), Some(RequestDrop::PathDenied));
    let allow_only = ReplayControls { allow_paths: vec![PathPattern::parse("/api/").unwrap()], ..Default::default() };
    assert_eq!(allow_only.refuse(b"GET", b"/api/x", 0), None);
    assert_eq!(allow_only.refuse(b"GET", b"/web", 0), Some(RequestDrop::PathNotAllowed));
}

#[test]
fn shadow_targets_at_the_name_limits() {
    let label = "a".repeat(63);
    let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    assert_eq!(name.len(), 253);
    assert_eq!(format!("{name}:1").parse::<ShadowTarget>().map(|t| t.host), Ok(name.clone()));
    assert!(format!("{name}b:1").parse::<ShadowTarget>().is_err(), "254 bytes");
    assert!(format!("{}:1", "a".repeat(64)).parse::<ShadowTarget>().is_err(), "a 64-byte label");
    assert!("a_b-c.d:1".parse::<ShadowTarget>().is_ok());
    assert!("a.:1".parse::<ShadowTarget>().is_err());
    assert_eq!("[::1]:0".parse::<ShadowTarget>(), Err("'[::1]:0': port 0 is not a service port".into()));
    assert_eq!(
        "::1:80".parse::<ShadowTarget>(),
        Err("'::1:80' is not HOST:PORT (write an IPv6 address in brackets: [::1]:8080)".into())
    );
    assert_eq!(" shadow:81 ".parse::<ShadowTarget>().map(|t| t.to_string()), Ok("shadow:81".into()));
    let v6 = ShadowTarget { host: "fd00::5".into(), port: 9 };
    assert_eq!(v6.to_string(), "[fd00::5]:9");
}

#[tokio::test(start_paused = true)]
async fn the_rate_holds_one_seconds_worth_and_refills_by_rate() {
    use std::time::Duration;

    use tokio::time::advance;
    let b = RateLimit::new(4.0);
    assert_eq!((0..10).filter(|_| b.try_take()).count(), 4);
    // 250 ms at 4/s is exactly one request.
    advance(Duration::from_millis(250)).await;
    assert!(b.try_take());
    assert!(!b.try_take());
    // A long pause refills to the burst, not beyond.
    advance(Duration::from_secs(60)).await;
    assert_eq!((0..10).filter(|_| b.try_take()).count(), 4);
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = ReplayControls::default();
    assert_eq!(c.max_body_bytes, 10 << 20, "10 MiB");
    assert_eq!(c.queue_bytes, 64 << 20, "64 MiB");
    assert_eq!(c.queue_capacity, 1024);
    assert_eq!((c.concurrency, c.pool_size), (64, 64));
    assert_eq!((c.request_timeout.as_secs(), c.connect_timeout.as_secs()), (5, 2));
    assert_eq!(format!("{:?}", c.tag_header), "X-Shadow-Request: <4 bytes>");
    assert_eq!(c.tag_header.value, "true");
    assert_eq!((MAX_CONCURRENCY, MAX_QUEUE_CAPACITY, MAX_BODY_BYTES_LIMIT), (10_000, 1_000_000, 1 << 30));
}
