//! Extractor tests: segments in, messages and counters out, for both IP families; by topic, on
//! one shared [`support`] module (also used by the replay client's framing test).

mod accounting;
mod conformance;
mod evidence;
mod framing;
mod limits;
mod random_streams;
mod responses;
mod stream_edges;
mod streams;
pub(crate) mod support;
