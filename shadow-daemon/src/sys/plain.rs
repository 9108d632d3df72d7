//! Plain-data records as bytes: the ring buffer's segment header, read from and written as the
//! bytes the kernel's programs write.

use shadow_common::{SEGMENT_HEADER_LEN, SegmentHeader};

/// The header `bytes` hold.
pub(crate) fn segment_header(bytes: &[u8; SEGMENT_HEADER_LEN]) -> SegmentHeader {
    // SAFETY: SegmentHeader is repr(C), made only of integers (every bit pattern is valid), and
    // `bytes` is exactly its size; read_unaligned copes with any alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
}

/// The bytes of `hdr`, as the kernel writes them.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn segment_header_bytes(hdr: SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    // SAFETY: SegmentHeader is repr(C) plain integers with explicit padding fields (no implicit
    // padding: every byte is initialised), of exactly this size.
    unsafe { std::mem::transmute(hdr) }
}
