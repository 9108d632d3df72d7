//! Sequence-number comparison at its boundaries: at equality, at the half-space and across the
//! wrap.

use super::*;

#[test]
fn sequence_comparison_at_its_boundaries() {
    // Equal: not before, but at or before.
    assert!(!seq_lt(7, 7));
    assert!(seq_le(7, 7));
    // One apart, both ways.
    assert!(seq_lt(7, 8) && seq_le(7, 8));
    assert!(!seq_lt(8, 7) && !seq_le(8, 7));
    // Across the wrap.
    assert!(seq_lt(u32::MAX, 0) && seq_le(u32::MAX, 0));
    assert!(!seq_lt(0, u32::MAX) && !seq_le(0, u32::MAX));
    // The half-space: 2^31 - 1 ahead is ahead, 2^31 ahead reads as behind (RFC 1982).
    assert!(seq_lt(0, 0x7fff_ffff));
    assert!(!seq_lt(0, 0x8000_0000) && !seq_le(0, 0x8000_0000));
    assert_eq!(seq_diff(0x7fff_ffff, 0), i32::MAX);
    assert_eq!(seq_diff(0x8000_0000, 0), i32::MIN);
    assert_eq!(seq_diff(0, 1), -1);
    assert_eq!(seq_diff(5, 5), 0);
    assert_eq!(seq_diff(1, u32::MAX - 1), 3);
}
