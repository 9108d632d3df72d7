//! Endpoints: the unit latencies are compared by. `GET /users/42?x=1` and `GET /users/43` are the
//! same endpoint, `GET /users/:id`; the number of endpoints tracked is capped so that neither
//! memory nor the metric label set grows with the URLs clients invent.

use std::collections::HashMap;

/// Label of the endpoint that collects everything past the cap.
pub const OTHER: &str = "other";
pub const DEFAULT_MAX_ENDPOINTS: usize = 200;
/// Longest endpoint name kept (bytes); longer paths are cut, which keeps metric lines bounded.
const MAX_ENDPOINT_LEN: usize = 160;
const MAX_METHOD_LEN: usize = 16;
/// Hex segments at least this long are identifiers (hashes, object ids), not names.
const MIN_HEX_ID_LEN: usize = 16;

/// Index into the endpoint table; 0 is [`OTHER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub(crate) u32);

impl EndpointId {
    pub const OTHER: Self = Self(0);
}

/// `METHOD /path/template`: query and fragment dropped, numeric, UUID and long hex path segments
/// replaced by `:id`, bytes outside printable ASCII (and `"`, `\`) replaced by `_` so the name is
/// always a safe metric label value.
pub fn endpoint_template(method: &[u8], target: &[u8]) -> String {
    let mut out = String::with_capacity(method.len() + target.len().min(MAX_ENDPOINT_LEN) + 1);
    endpoint_template_into(&mut out, method, target);
    out
}

/// [`endpoint_template`] into `out` (cleared first), to reuse its allocation.
pub(crate) fn endpoint_template_into(out: &mut String, method: &[u8], target: &[u8]) {
    out.clear();
    push_safe(out, &method[..method.len().min(MAX_METHOD_LEN)]);
    out.push(' ');
    let path = crate::http::request_path(target);
    if path.first() != Some(&b'/') {
        // `*` (OPTIONS) or an authority (CONNECT): no segments to template.
        push_safe(out, &path[..path.len().min(MAX_ENDPOINT_LEN)]);
    } else {
        for seg in path.split(|&b| b == b'/').skip(1) {
            out.push('/');
            if is_identifier(seg) {
                out.push_str(":id");
            } else {
                // Only what can survive the cut below, so `out` never grows past the cap.
                push_safe(out, &seg[..seg.len().min(MAX_ENDPOINT_LEN.saturating_sub(out.len()))]);
            }
            if out.len() >= MAX_ENDPOINT_LEN {
                break;
            }
        }
    }
    if out.len() > MAX_ENDPOINT_LEN {
        // Only ASCII was pushed, so any byte index is a char boundary.
        out.truncate(MAX_ENDPOINT_LEN);
    }
}

fn push_safe(out: &mut String, bytes: &[u8]) {
    out.extend(bytes.iter().map(|&b| if b.is_ascii_graphic() && b != b'"' && b != b'\\' { b as char } else { '_' }));
}

fn is_identifier(seg: &[u8]) -> bool {
    if seg.is_empty() {
        return false;
    }
    if seg.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if seg.len() >= MIN_HEX_ID_LEN && seg.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    is_uuid(seg)
}

fn is_uuid(seg: &[u8]) -> bool {
    seg.len() == 36
        && seg
            .iter()
            .enumerate()
            .all(|(i, &b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// Endpoint names to ids, at most `max` of them besides [`OTHER`].
#[derive(Debug)]
pub(crate) struct EndpointNames {
    ids: HashMap<String, EndpointId>,
    names: Vec<String>,
    max: usize,
}

impl EndpointNames {
    pub(crate) fn new(max: usize) -> Self {
        Self { ids: HashMap::new(), names: vec![OTHER.to_owned()], max }
    }

    /// The id for `name`, registering it while there is room; `(id, overflowed)`. Allocates only
    /// for a new name.
    pub(crate) fn intern(&mut self, name: &str) -> (EndpointId, bool) {
        if let Some(id) = self.ids.get(name) {
            return (*id, false);
        }
        if self.ids.len() >= self.max {
            return (EndpointId::OTHER, true);
        }
        let id = EndpointId(self.names.len() as u32);
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        (id, false)
    }

    pub(crate) fn name(&self, id: EndpointId) -> &str {
        self.names.get(id.0 as usize).map_or(OTHER, String::as_str)
    }

    /// Endpoints tracked, not counting [`OTHER`].
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_replace_ids_and_drop_queries() {
        let t = |m: &str, p: &str| endpoint_template(m.as_bytes(), p.as_bytes());
        assert_eq!(t("GET", "/users/42/orders?page=2"), "GET /users/:id/orders");
        assert_eq!(t("GET", "/users/42/orders/7#x"), "GET /users/:id/orders/:id");
        assert_eq!(t("DELETE", "/items/123e4567-e89b-12d3-a456-426614174000"), "DELETE /items/:id");
        assert_eq!(t("GET", "/commits/9fceb02d0ae598e95dc970b74767f19372d61af8/files"), "GET /commits/:id/files");
        assert_eq!(t("GET", "/v1/facade/beef"), "GET /v1/facade/beef", "short hex words are names");
        assert_eq!(t("GET", "/"), "GET /");
        assert_eq!(t("GET", "/a/"), "GET /a/");
        assert_eq!(t("GET", "http://example.com:8080/x/1?y"), "GET /x/:id");
        assert_eq!(t("OPTIONS", "*"), "OPTIONS *");
        assert_eq!(t("GET", "/q\"uo\\te\u{e9}"), "GET /q_uo_te__");
        let long = format!("/{}", "a/".repeat(500));
        assert!(t("GET", &long).len() <= MAX_ENDPOINT_LEN);
        assert_eq!(t("AVERYLONGMETHODNAMEXX", "/").len(), MAX_METHOD_LEN + 2);
        let huge = format!("/a/{}/b", "x".repeat(10_000));
        assert_eq!(t("GET", &huge), format!("GET /a/{}", "x".repeat(MAX_ENDPOINT_LEN - 7)));
        let mut reused = String::new();
        endpoint_template_into(&mut reused, b"GET", huge.as_bytes());
        assert!(reused.capacity() < 1024, "the scratch buffer stays small: {}", reused.capacity());
        endpoint_template_into(&mut reused, b"GET", b"/users/1?x");
        assert_eq!(reused, "GET /users/:id");
    }

    #[test]
    fn cardinality_is_bounded_and_overflow_goes_to_other() {
        let mut n = EndpointNames::new(3);
        let (a, o) = n.intern("GET /a");
        assert!(!o && a != EndpointId::OTHER);
        assert_eq!(n.intern("GET /a"), (a, false));
        n.intern("GET /b");
        n.intern("GET /c");
        assert_eq!(n.intern("GET /d"), (EndpointId::OTHER, true));
        assert_eq!(n.intern("GET /e"), (EndpointId::OTHER, true));
        assert!(!n.intern("GET /b").1, "known endpoints still resolve when full");
        assert_eq!(n.len(), 3);
        assert_eq!(n.name(a), "GET /a");
        assert_eq!(n.name(EndpointId::OTHER), OTHER);
    }
}
