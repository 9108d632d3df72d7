//! Every flag is also a `SHADOW_*` variable. Alone in its own test binary because the environment
//! is process-wide: no other test may parse arguments while these are set.

use clap::Parser;
use shadow_daemon::config::Args;

#[test]
fn every_control_is_readable_from_the_environment() {
    let vars = [
        ("SHADOW_INTERFACE", "lo"),
        ("SHADOW_PORT", "8080,8081"),
        ("SHADOW_SHADOW", "127.0.0.1:9090"),
        ("SHADOW_ALLOW_METHOD", "POST"),
        ("SHADOW_TAG_HEADER", "X-Mirror: yes"),
        ("SHADOW_HOST_MODE", "target"),
        ("SHADOW_REMOVE_HEADER", "Authorization,Cookie"),
        ("SHADOW_SET_HEADER", "X-A: 1, 2\nX-B: 3"),
        ("SHADOW_ALLOW_PATH", "/api/,/v2/"),
        ("SHADOW_DENY_PATH", "/api/admin"),
        ("SHADOW_REPLAY_RATE", "25"),
        ("SHADOW_MAX_BODY_BYTES", "64KiB"),
        ("SHADOW_REQUEST_TIMEOUT", "750ms"),
        ("SHADOW_CONNECT_TIMEOUT", "1s"),
        ("SHADOW_CONCURRENCY", "7"),
        ("SHADOW_QUEUE_CAPACITY", "99"),
        ("SHADOW_POOL_SIZE", "5"),
        ("SHADOW_QUEUE_BYTES", "1MiB"),
        ("SHADOW_MAX_ENDPOINTS", "20"),
    ];
    for (k, v) in vars {
        // SAFETY: this binary has this one test, so no other thread reads the environment.
        unsafe { std::env::set_var(k, v) };
    }
    let c = Args::try_parse_from(["shadow-daemon"]).expect("parses from the environment").resolve().expect("resolves");
    assert_eq!(c.interface, "lo");
    assert_eq!(c.ports(), vec![8080, 8081]);
    let r = &c.rules[0];
    assert_eq!(r.shadow.as_ref().map(|t| t.to_string()).as_deref(), Some("127.0.0.1:9090"));
    let k = &r.controls;
    assert!(k.methods.allows(b"POST"));
    assert_eq!(k.tag_header.name.as_str(), "X-Mirror");
    assert_eq!(k.remove_headers.len(), 2);
    assert_eq!(k.set_headers.len(), 2, "one header per line");
    assert_eq!(k.set_headers[0].value, "1, 2");
    assert_eq!((k.allow_paths.len(), k.deny_paths.len()), (2, 1));
    assert_eq!(k.replay_rate, Some(25.0));
    assert_eq!(k.max_body_bytes, 64 * 1024);
    assert_eq!(k.request_timeout.as_millis(), 750);
    assert_eq!(k.connect_timeout.as_secs(), 1);
    assert_eq!((k.concurrency, k.queue_capacity, k.pool_size, k.queue_bytes), (7, 99, 5, 1 << 20));
    assert_eq!(c.max_endpoints, 20);

    // SAFETY: as above, no other thread reads the environment.
    unsafe { std::env::set_var("SHADOW_REPLAY_RATE", "-3") };
    let e = Args::try_parse_from(["shadow-daemon"]).unwrap_err().to_string();
    assert!(e.contains("--replay-rate"), "an environment value is reported under its flag: {e}");
}
