//! Path rules: a rule's allow and deny patterns applied to a request target's normal form.

use crate::{
    http::{PathPattern, normalize_path},
    metrics::RequestDrop,
};

/// Why `target` is refused by these patterns, if it is: deny wins; with allow patterns, one must
/// match. The target is normalized first, and only when there are patterns at all.
pub(super) fn refuse(allow: &[PathPattern], deny: &[PathPattern], target: &[u8]) -> Option<RequestDrop> {
    if deny.is_empty() && allow.is_empty() {
        return None;
    }
    let path = normalize_path(target);
    if deny.iter().any(|p| p.matches(&path)) {
        return Some(RequestDrop::PathDenied);
    }
    if !allow.is_empty() && !allow.iter().any(|p| p.matches(&path)) {
        return Some(RequestDrop::PathNotAllowed);
    }
    None
}
