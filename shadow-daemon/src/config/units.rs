//! Value parsers shared by the flags and the config file: one parser per kind of value, so
//! `--request-timeout 500ms` and `request_timeout = "500ms"` mean the same and fail the same way.

use std::time::Duration;

use crate::replay::controls::MAX_BODY_BYTES_LIMIT;

/// Longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Parse a request rate: positive requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of requests per second"))?;
    if !v.is_finite() || v <= 0.0 || v > 10_000_000.0 {
        return Err(format!("{v} is not a rate between 0 (exclusive) and 10000000 requests/s (omit it for no limit)"));
    }
    Ok(v)
}

/// Parse a duration above 0 and at most an hour: a number of seconds (`5`, `0.25`, `0.5s`), or
/// what people type with units, read by `humantime` (`250ms`, `1m`, `1m30s`, `2min`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let out_of_range = || format!("'{s}' is not a duration above 0 and at most {}s", MAX_TIMEOUT.as_secs());
    // Seconds as a number, with or without `s` (fractions allowed: `0.5s`).
    let seconds = t.strip_suffix('s').unwrap_or(t).trim();
    let d = if let Ok(v) = seconds.parse::<f64>() {
        // Negative, infinite and NaN fail the conversion; zero and what rounds to it, below.
        Duration::try_from_secs_f64(v).map_err(|_| out_of_range())?
    } else {
        humantime::parse_duration(t).map_err(|_| format!("'{s}' is not a duration (e.g. 5, 0.5s, 250ms, 1m, 1m30s)"))?
    };
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(out_of_range());
    }
    Ok(d)
}

/// Parse a byte count for a body: [`parse_byte_size`], at most 1 GiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let v = parse_byte_size(s)?;
    if v > MAX_BODY_BYTES_LIMIT {
        return Err(format!("'{s}' is more than 1GiB"));
    }
    Ok(v)
}

/// Parse a byte count as `bytesize` reads it: a plain number, or with a binary (`KiB`, `MiB`,
/// `GiB`, or Kubernetes' `Ki`, `Mi`, `Gi`) or decimal unit (`KB`, `MB`, `GB`), fractions allowed
/// (`1.5GiB`). A bare `k`, `m`, `g` or `t` is refused as ambiguous (1000 or 1024?) rather than
/// guessed. Caps on memory (--memory-cap, --queue-bytes) may be several GiB; at most 2^63 - 1.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let unit = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.').trim();
    if unit.len() == 1 && "kmgtpe".contains(unit.to_ascii_lowercase().as_str()) {
        let (n, u) = (t[..t.len() - unit.len()].trim(), unit.to_ascii_uppercase());
        return Err(format!("'{s}' is ambiguous: write {n}{u}iB (powers of 1024) or {n}{u}B (powers of 1000)"));
    }
    // A plain count is read exactly (bytesize reads numbers as floats).
    let v = match t.parse::<u64>() {
        Ok(v) => v,
        Err(_) => t
            .parse::<bytesize::ByteSize>()
            .map_err(|_| format!("'{s}' is not a byte count (e.g. 1048576, 512KiB, 64Mi, 10MB, 1.5GiB)"))?
            .as_u64(),
    };
    // bytesize saturates what does not fit: refuse rather than cap.
    if v > i64::MAX as u64 {
        return Err(format!("'{s}' is too large a byte count"));
    }
    Ok(v)
}

/// Parse a positive number of seconds (fractions allowed) that a [`Duration`] can hold: `1e20`
/// is a usage error, not a panic.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{v}: must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|_| format!("{v}: more seconds than a duration can hold"))
}

/// Parse a count between `min` and `max` inclusive.
pub fn parse_count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let v: usize = s.trim().parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{v} is not between {min} and {max}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        // The units people type.
        for (text, d) in
            [("1m", 60_000), ("1m30s", 90_000), ("2min", 120_000), ("1h", 3_600_000), ("5ms", 5), (" 3s ", 3_000)]
        {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(d)), "{text}");
        }
        for bad in ["0", "-1", "x", "4000", "nan", "inf", "0ms", "2h", "1e400", "5 parsecs", "", "-0", "1e-12", "-inf"]
        {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("2h"), Err("'2h' is not a duration above 0 and at most 3600s".into()));
        assert_eq!(parse_duration("soon"), Err("'soon' is not a duration (e.g. 5, 0.5s, 250ms, 1m, 1m30s)".into()));
        assert_eq!(parse_bytes("10MiB"), Ok(10 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("2GiB").is_err() && parse_bytes("x").is_err() && parse_bytes("-1").is_err());
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30), "the body cap's top is in range");
        assert!(parse_bytes("1073741825").is_err());
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err() && parse_rate("inf").is_err());
        // The top of the range is in it (a quota can express 10^7/s), just past it is not.
        assert_eq!(parse_rate("10000000"), Ok(1e7));
        assert!(parse_rate("10000000.5").is_err());
        assert_eq!(parse_count("3", 1, 5), Ok(3));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30), "caps on memory may pass 1 GiB");
        assert_eq!(parse_byte_size("16 GiB"), Ok(16 << 30));
        assert!(parse_byte_size("99999999999GiB").is_err(), "saturated, refused");
        assert_eq!(parse_byte_size("9223372036854775807"), Ok(i64::MAX as u64), "plain counts are exact");
        assert_eq!(parse_byte_size("10000000000000001"), Ok(10_000_000_000_000_001));
        assert!(parse_byte_size("9223372036854775808").is_err());
        // The units people type: Kubernetes' binary suffixes, decimal units, fractions, spaces
        // and any case.
        for (text, v) in [
            ("64Mi", 64u64 << 20),
            ("64 MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("10MB", 10_000_000),
            ("10 kb", 10_000),
            ("1.5GiB", 3 << 29),
            ("1Gi", 1 << 30),
            ("1024", 1024),
            (" 7 ", 7),
        ] {
            assert_eq!(parse_byte_size(text), Ok(v), "{text}");
        }
        for bad in ["10m", "512k", "2G", "1t", "-1", "x", "1e3", "", "MiB", "1.5"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_byte_size("512k"),
            Err("'512k' is ambiguous: write 512KiB (powers of 1024) or 512KB (powers of 1000)".into())
        );
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["0", "-1", "nan", "inf", "1e20", "x"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(parse_count("0", 1, 5).is_err());
    }
}
