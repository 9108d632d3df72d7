//! Reassembly + extraction throughput, segmented as the kernel delivers it: a 1 KiB request in
//! one segment; a 64 KiB request in GRO-sized segments (64 KiB less the IP and TCP headers).
//! Each sample pushes a batch of requests (keep-alive, spread over several connections) into a
//! fresh extractor; divan reports items (requests) and bytes per second.
//!
//! `cargo bench -p shadow-daemon --bench extract`

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use divan::{
    Bencher,
    counter::{BytesCount, ItemsCount},
};
use shadow_common::tcp_flags;
use shadow_daemon::{
    reassembly::{Extractor, ExtractorConfig, HttpEvent},
    segment::{Direction, FlowId, Segment},
};

fn main() {
    divan::main();
}

/// Largest payload of a GRO/GSO segment: 64 KiB less IPv4 and TCP headers with timestamps.
const GRO_PAYLOAD: usize = 65535 - 20 - 32;
const FLOWS: u16 = 16;

/// A request of exactly `size` bytes: a realistic head (cookie padding) and, past 2 KiB, a
/// Content-Length body.
fn request(size: usize) -> Vec<u8> {
    let base = "GET /api/v1/items?id=12345&sort=desc HTTP/1.1\r\nHost: shop.example.com\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
        Accept: application/json\r\nAccept-Encoding: gzip, br\r\nConnection: keep-alive\r\n";
    if size <= 2048 {
        let pad = size - base.len() - "Cookie: \r\n\r\n".len();
        format!("{base}Cookie: {}\r\n\r\n", "s".repeat(pad)).into_bytes()
    } else {
        let head_guess = format!(
            "POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        );
        let body = size - head_guess.len();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Type: application/octet-stream\r\nContent-Length: {body:>width$}\r\n\r\n",
            width = size.to_string().len()
        );
        let mut r = head.into_bytes();
        r.resize(size, b'x');
        r
    }
}

fn flow(i: u16) -> FlowId {
    let v4 = i.is_multiple_of(2);
    let c: IpAddr = if v4 { "10.1.0.1".parse().unwrap() } else { "fd00::1".parse().unwrap() };
    let s: IpAddr = if v4 { "10.1.0.2".parse().unwrap() } else { "fd00::2".parse().unwrap() };
    FlowId { client: SocketAddr::new(c, 30000 + i), server: SocketAddr::new(s, 8080) }
}

/// `n` requests of `size` bytes, round-robin over the flows, each cut into GRO-sized segments.
fn segments(n: usize, size: usize) -> Vec<Segment> {
    let req = request(size);
    assert_eq!(req.len(), size);
    let mut seqs = vec![1_000u32; FLOWS as usize];
    let mut out = Vec::new();
    let mut ts = 1_000_000u64;
    for i in 0..n {
        let f = (i % FLOWS as usize) as u16;
        for (k, chunk) in req.chunks(GRO_PAYLOAD).enumerate() {
            ts += 1_000;
            let seq = &mut seqs[f as usize];
            out.push(Segment {
                flow: flow(f),
                direction: Direction::Request,
                seq: *seq,
                ack: 77,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                ts_ns: ts,
                wire_len: chunk.len() as u32,
                payload: Bytes::copy_from_slice(chunk),
                truncated: false,
                request_start: k == 0,
                ifindex: 1,
            });
            *seq = seq.wrapping_add(chunk.len() as u32);
        }
    }
    out
}

/// `release`: drop each request as soon as it is out (as the daemon does once the next stage
/// has it), so its buffer is reused; otherwise the batch is kept and dropped untimed, and fresh
/// buffers fault their pages in.
fn run(bencher: Bencher, n: usize, size: usize, release: bool) {
    let segs = segments(n, size);
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(n * size))
        .with_inputs(|| (segs.clone(), Vec::with_capacity(n)))
        .bench_local_values(|(segs, mut out): (Vec<Segment>, Vec<HttpEvent>)| {
            let mut ex = Extractor::new(ExtractorConfig::default());
            let mut emitted = 0;
            for s in segs {
                let now = s.ts_ns;
                ex.push(s, now, &mut out);
                if release {
                    emitted += out.len();
                    out.clear();
                }
            }
            assert_eq!(emitted + out.len(), n);
            out
        });
}

/// 1 KiB requests, one segment each.
#[divan::bench]
fn request_1k(bencher: Bencher) {
    run(bencher, 4096, 1024, false);
}

/// 64 KiB requests in GRO-sized segments (two per request).
#[divan::bench]
fn request_64k(bencher: Bencher) {
    run(bencher, 256, 64 * 1024, false);
}

/// 64 KiB requests, each dropped as soon as it is extracted (warm allocator).
#[divan::bench]
fn request_64k_released(bencher: Bencher) {
    run(bencher, 256, 64 * 1024, true);
}
