//! The replay ring of a terminal session: the last bytes its process wrote, addressed by
//! absolute offset (bytes written since start), with the stream (stdout or stderr) each byte
//! came from. Readers keep their own offset, so one ring serves a holder, observers and
//! reconnects alike, and a reader that falls more than the capacity behind learns exactly where
//! it resumes.
//!
//! Pure data, synchronous; the session keeps it behind its lock.

use std::collections::VecDeque;

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (all output of a pseudo-terminal).
    Stdout,
    /// Standard error (pipe mode).
    Stderr,
}

/// Bytes of one stream starting at an absolute offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Absolute offset of the first byte.
    pub start: u64,
    /// The stream they came from.
    pub stream: Stream,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Chunk {
    /// The offset just past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// A bounded byte ring with absolute offsets.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    /// Bytes ever pushed; the offset just past the newest byte.
    total: u64,
    /// Where each run of bytes from one stream starts, oldest first. The first run may start
    /// before the oldest retained byte.
    runs: VecDeque<(u64, Stream)>,
}

impl Ring {
    /// An empty ring keeping the last `cap` bytes (`cap` ≥ 1).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            buf: VecDeque::with_capacity(cap.min(64 << 10)),
            cap,
            total: 0,
            runs: VecDeque::new(),
        }
    }

    /// Offset just past the newest byte: the total ever written.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Offset of the oldest byte still retained.
    pub fn oldest(&self) -> u64 {
        self.total - self.buf.len() as u64
    }

    /// Appends bytes of `stream`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.runs.back().map(|&(_, s)| s) != Some(stream) {
            self.runs.push_back((self.total, stream));
        }
        self.total += data.len() as u64;
        let kept = &data[data.len().saturating_sub(self.cap)..];
        let overflow = (self.buf.len() + kept.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(kept);
        let oldest = self.oldest();
        while self.runs.get(1).is_some_and(|&(start, _)| start <= oldest) {
            self.runs.pop_front();
        }
    }

    /// Everything retained from `from` on, whatever the stream: the offset of the first byte
    /// returned (`from` clamped to the oldest retained byte) and the bytes.
    pub fn replay(&self, from: u64) -> (u64, Vec<u8>) {
        let start = from.clamp(self.oldest(), self.total);
        let skip = (start - self.oldest()) as usize;
        (start, self.buf.range(skip..).copied().collect())
    }

    /// The next bytes of a single stream from `from` on, at most `max` of them; `None` when
    /// nothing was written past `from`. If `from` is older than the oldest retained byte the
    /// chunk starts later than asked: the reader lost the bytes in between.
    pub fn chunk(&self, from: u64, max: usize) -> Option<Chunk> {
        let start = from.max(self.oldest());
        if start >= self.total || max == 0 {
            return None;
        }
        // The run holding `start` is the last one starting at or before it.
        let idx = self.runs.partition_point(|&(s, _)| s <= start).saturating_sub(1);
        let (_, stream) = self.runs.get(idx).copied().unwrap_or((0, Stream::Stdout));
        let run_end = self.runs.get(idx + 1).map_or(self.total, |&(s, _)| s);
        let end = run_end.min(start.saturating_add(max as u64));
        let a = (start - self.oldest()) as usize;
        let b = (end - self.oldest()) as usize;
        Some(Chunk {
            start,
            stream,
            bytes: self.buf.range(a..b).copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(ring: &Ring, mut from: u64, max: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        while let Some(c) = ring.chunk(from, max) {
            from = c.end();
            out.push(c);
        }
        out
    }

    #[test]
    fn offsets_and_streams_survive_wraparound() {
        let mut ring = Ring::new(8);
        ring.push(Stream::Stdout, b"abcd");
        ring.push(Stream::Stderr, b"EF");
        ring.push(Stream::Stdout, b"ghij");
        assert_eq!(ring.total(), 10);
        assert_eq!(ring.oldest(), 2);
        assert_eq!(ring.replay(0), (2, b"cdEFghij".to_vec()));
        assert_eq!(ring.replay(5), (5, b"Fghij".to_vec()));
        assert_eq!(ring.replay(10), (10, Vec::new()));
        assert_eq!(ring.replay(99), (10, Vec::new()));

        let chunks = drain(&ring, 0, 3);
        let got: Vec<(u64, Stream, &[u8])> = chunks
            .iter()
            .map(|c| (c.start, c.stream, c.bytes.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                (2, Stream::Stdout, &b"cd"[..]),
                (4, Stream::Stderr, &b"EF"[..]),
                (6, Stream::Stdout, &b"ghi"[..]),
                (9, Stream::Stdout, &b"j"[..]),
            ]
        );
        assert_eq!(ring.chunk(10, 3), None);
    }

    #[test]
    fn a_push_larger_than_the_ring_keeps_its_tail() {
        let mut ring = Ring::new(4);
        ring.push(Stream::Stderr, b"x");
        ring.push(Stream::Stdout, b"0123456789");
        assert_eq!(ring.total(), 11);
        assert_eq!(ring.replay(0), (7, b"6789".to_vec()));
        let c = ring.chunk(0, 100).expect("chunk");
        assert_eq!(
            (c.start, c.stream, c.bytes),
            (7, Stream::Stdout, b"6789".to_vec())
        );
        assert_eq!(ring.runs.len(), 1, "runs before the oldest byte are dropped");
    }

    #[test]
    fn readers_at_any_offset_see_every_byte_once() {
        // A reader that keeps up sees the whole history, byte for byte, across many wraps.
        let mut ring = Ring::new(1000);
        let mut seen = Vec::new();
        let mut cursor = 0;
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let data = format!("line {i}\n");
            let stream = if i % 7 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            ring.push(stream, data.as_bytes());
            expected.extend_from_slice(data.as_bytes());
            if i % 3 == 0 {
                for c in drain(&ring, cursor, 17) {
                    assert_eq!(c.start, cursor, "no gap for a reader that keeps up");
                    cursor = c.end();
                    seen.extend_from_slice(&c.bytes);
                }
            }
        }
        for c in drain(&ring, cursor, 17) {
            cursor = c.end();
            seen.extend_from_slice(&c.bytes);
        }
        assert_eq!(seen, expected);
        assert_eq!(cursor, ring.total());
    }
}
