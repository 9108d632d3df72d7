//! The control protocol: request lines as the daemon's server reads them (one JSON object per
//! line, several lines per connection) and answer lines as `shadowctl` reads them.
//!
//! Checked: no panic; a line is either a request that serialises back to a line that reads as
//! the same request, or an error answer with a named kind that is itself one JSON line and reads
//! back the same; an answer line from the daemon reads or fails without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_daemon::control::{ErrorKind, MAX_LINE, Response, parse_request};

fn request_line(line: &[u8]) {
    // As the server: a line without its end of line and surrounding blanks.
    match parse_request(line.trim_ascii()) {
        Ok(req) => {
            let text = serde_json::to_vec(&req).expect("a request serialises");
            assert!(!text.contains(&b'\n'), "one line");
            let back = parse_request(&text).unwrap_or_else(|e| panic!("{req:?} does not read back: {e:?}"));
            assert_eq!(back, req);
        }
        Err(answer) => {
            assert!(!answer.ok && answer.data.is_none());
            let e = answer.error.as_ref().expect("an error answer has its error");
            assert!(ErrorKind::ALL.contains(&e.kind));
            assert!(matches!(e.kind, ErrorKind::BadRequest | ErrorKind::Version), "{e:?}");
            let text = serde_json::to_vec(&answer).expect("an answer serialises");
            assert!(!text.contains(&b'\n') && text.len() <= MAX_LINE + 1024, "one bounded line");
            let back: Response = serde_json::from_slice(&text).expect("the answer reads back");
            assert_eq!(back, answer);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        for line in rest.split(|&b| b == b'\n') {
            request_line(line);
        }
    } else {
        // As shadowctl reads the daemon's answer.
        if let Ok(r) = serde_json::from_slice::<Response>(rest) {
            let text = serde_json::to_vec(&r).expect("serialises");
            let back: Response = serde_json::from_slice(&text).expect("reads back");
            assert_eq!(back.ok, r.ok);
            assert_eq!(back.error, r.error);
        }
    }
});
