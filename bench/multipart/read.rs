//! CPU per GiB of reading a multipart upload body, in one process and one
//! thread, with nothing else in the way: stowage's form reader
//! (`stowage::http::multipart::FormReader`) against `multer`, the general
//! parser the upload path used before (behind a framing guard whose scan
//! was the same one the reader does now). Both read the same body, one
//! file part of SIZE bytes cut into chunks of CHUNK bytes (hyper hands a
//! handler chunks of up to a few hundred KiB, one read at a time), in
//! alternating rounds.
//!
//!   cargo run --release --example multipart_read            # 1 GiB, 5 rounds
//!   SIZE_MIB=256 CHUNK_KIB=16 ROUNDS=9 cargo run --release --example multipart_read
//!
//! Prints one line per reader per round and a summary line: median
//! cpu-s per GiB (user + system, `getrusage`) and the ratio.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use stowage::http::multipart::{FormReader, FramingLimits};

const BOUNDARY: &str = "------------------------d74496d66958873e";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The body's chunks: a part's head, SIZE bytes of pseudo-random data (one
/// 16 MiB block repeated, as slices), and the closing delimiter, cut at
/// every CHUNK bytes as a socket read would cut them.
fn body(size: usize, chunk: usize) -> Vec<Bytes> {
    let mut block = BytesMut::with_capacity(16 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while block.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    let block = block.freeze();
    let head = Bytes::from(format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ));
    let tail = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
    // Cut head ++ data ++ tail at multiples of `chunk`, without copying the
    // data: a chunk that spans two pieces is the only one built by copy.
    let mut pieces: Vec<Bytes> = vec![head];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        pieces.push(block.slice(..n));
        left -= n;
    }
    pieces.push(tail);
    let mut out = Vec::new();
    let mut carry = BytesMut::new();
    for mut p in pieces {
        if !carry.is_empty() {
            let need = (chunk - carry.len()).min(p.len());
            carry.extend_from_slice(&p.split_to(need));
            if carry.len() == chunk {
                out.push(carry.split().freeze());
            }
        }
        while p.len() >= chunk {
            out.push(p.split_to(chunk));
        }
        carry.extend_from_slice(&p);
    }
    if !carry.is_empty() {
        out.push(carry.freeze());
    }
    out
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The body as a socket delivers it: one chunk, then nothing ready until
/// the reader comes back (`Pending`, woken at once). A stream that is always
/// ready would let `multer`, which reads all it can before it parses, pull
/// the whole body into its buffer.
struct OneAtATime<I> {
    chunks: I,
    ready: bool,
}

impl<I: Iterator<Item = Bytes> + Unpin> futures::Stream for OneAtATime<I> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.ready = false;
        std::task::Poll::Ready(self.chunks.next().map(Ok))
    }
}

fn chunks(body: &[Bytes]) -> OneAtATime<impl Iterator<Item = Bytes> + Unpin + '_> {
    OneAtATime {
        chunks: body.iter().cloned(),
        ready: false,
    }
}

/// Bytes of the file part, read with stowage's reader.
async fn with_reader(body: &[Bytes]) -> u64 {
    let limits = FramingLimits {
        header_bytes: 16 * 1024,
        max_parts: 8,
    };
    let mut form = FormReader::new(chunks(body), BOUNDARY, limits);
    let mut n = 0;
    while form.next_part().await.expect("a valid body").is_some() {
        while let Some(c) = form.chunk().await.expect("a valid body") {
            n += c.len() as u64;
        }
    }
    n
}

/// Bytes of the file part, read with `multer`.
async fn with_multer(body: &[Bytes]) -> u64 {
    let mut form = multer::Multipart::new(chunks(body), BOUNDARY);
    let mut n = 0;
    while let Some(mut f) = form.next_field().await.expect("a valid body") {
        while let Some(c) = f.chunk().await.expect("a valid body") {
            n += c.len() as u64;
        }
    }
    n
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let size = env_usize("SIZE_MIB", 1024) << 20;
    let chunk = env_usize("CHUNK_KIB", 64) << 10;
    let rounds = env_usize("ROUNDS", 5);
    let body = body(size, chunk);
    let gib = size as f64 / (1u64 << 30) as f64;
    println!(
        "body: {} MiB in {} chunks of {} KiB",
        size >> 20,
        body.len(),
        chunk >> 10
    );
    let (mut reader, mut multer) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (name, times) in [("reader", &mut reader), ("multer", &mut multer)] {
            let t = cpu_time();
            let n = futures::executor::block_on(async {
                if name == "reader" {
                    with_reader(&body).await
                } else {
                    with_multer(&body).await
                }
            });
            let spent = (cpu_time() - t).as_secs_f64() / gib;
            assert_eq!(n, size as u64, "{name} read the whole file");
            println!("round {round}: {name} {spent:.3} cpu-s/GiB");
            times.push(spent);
        }
    }
    let (r, m) = (median(reader), median(multer));
    println!(
        "median: reader {r:.3} cpu-s/GiB, multer {m:.3} cpu-s/GiB, reader/multer {:.2}x",
        r / m
    );
}
