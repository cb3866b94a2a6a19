//! The spill file's record format: one record per journal batch, packed to about half the
//! size of its SSE bytes, and unpacked back to exactly those bytes.
//!
//! A batch of output events repeats everything but the text: `id: N`, the JSON around the
//! text, the timestamp. A packed record keeps only what varies (the stream, the timestamp when
//! it changes, the text as it was escaped), so a stream of short lines spills about half the
//! bytes, which is half the spill's cost (its page-cache writes are most of a stream's CPU) and
//! half the reads of a cursor that falls behind. Packing parses the rendered bytes and checks
//! each event against the template it will be rebuilt from, piece by piece; a batch with any
//! event that does not fit (`init`, errors, kernel results) is kept raw. So unpacking is exact
//! by construction, whatever the batch held. Synchronous, no I/O.
//!
//! ```text
//! record  = RAW sse-bytes | PACKED event*
//! event   = head [timestamp: i64 LE, when head has NEW_TS] len: LEB128 text: len bytes
//! head    = STDERR? | NEW_TS?        (the first event always has NEW_TS)
//! ```
//! Ids are not stored: a batch's events are numbered from its first id, which the journal's
//! batch index holds.

use std::io;

use super::render::{Digits, Tail};
use super::OutputKind;

const RAW: u8 = 0;
const PACKED: u8 = 1;
const STDERR: u8 = 1;
const NEW_TS: u8 = 2;
const TAIL_HEAD: &[u8] = b"\",\"timestamp\":";

/// Appends the record of `batch` (rendered SSE whose first event is `first_id`) to `out`.
pub(super) fn pack(batch: &[u8], first_id: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(PACKED);
    if !pack_events(batch, first_id, out) {
        out.truncate(start);
        out.push(RAW);
        out.extend_from_slice(batch);
    }
}

/// The events of `batch` as packed events, or false (with `out` partly written) as soon as one
/// does not fit the output template.
fn pack_events(mut batch: &[u8], first_id: u64, out: &mut Vec<u8>) -> bool {
    let mut id = Digits::new(first_id);
    let mut tail: Option<(i64, Tail)> = None;
    while !batch.is_empty() {
        // `id: N\ndata: ` with the id this event must have.
        let Some(rest) = strip(batch, b"id: ")
            .and_then(|b| strip(b, id.as_bytes()))
            .and_then(|b| strip(b, b"\ndata: "))
        else {
            return false;
        };
        let (kind, rest) = match (
            strip(rest, OutputKind::Stdout.json_prefix()),
            strip(rest, OutputKind::Stderr.json_prefix()),
        ) {
            (Some(r), _) => (0, r),
            (None, Some(r)) => (STDERR, r),
            (None, None) => return false,
        };
        // The data line ends at its first newline (JSON text has none raw), the event one byte
        // later with the blank line.
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            return false;
        };
        if rest.get(nl + 1) != Some(&b'\n') {
            return false;
        }
        let event_end = nl + 2;
        let line = &rest[..event_end];
        // The same tail as the previous event (one read's lines share a timestamp), or a new
        // one parsed from the line and checked to render back to the same bytes.
        let (text_len, new_ts) = match &tail {
            Some((_, t)) if ends_with(line, t.as_bytes()) => (line.len() - t.as_bytes().len(), None),
            _ => match parse_tail(line) {
                Some((ts, t)) => {
                    let len = line.len() - t.as_bytes().len();
                    tail = Some((ts, t));
                    (len, Some(ts))
                }
                None => return false,
            },
        };
        out.push(kind | if new_ts.is_some() { NEW_TS } else { 0 });
        if let Some(ts) = new_ts {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        put_len(out, text_len);
        out.extend_from_slice(&line[..text_len]);
        batch = &rest[event_end..];
        id.increment();
    }
    true
}

/// The timestamp of an output event's data line (with its blank line), and its tail, when the
/// line ends with exactly the tail that timestamp renders to.
fn parse_tail(line: &[u8]) -> Option<(i64, Tail)> {
    let body = line.strip_suffix(b"}\n\n")?;
    let digits = body.len()
        - body
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit() || **b == b'-')
            .count();
    if !ends_with(&body[..digits], TAIL_HEAD) {
        return None;
    }
    let ts: i64 = std::str::from_utf8(&body[digits..]).ok()?.parse().ok()?;
    let tail = Tail::new(ts);
    ends_with(line, tail.as_bytes()).then_some((ts, tail))
}

/// Appends the SSE bytes of `record`, a batch whose first event is `first_id`, to `out`.
pub(super) fn unpack(record: &[u8], first_id: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "journal spill record is corrupt");
    let (&tag, mut rest) = record.split_first().ok_or_else(corrupt)?;
    match tag {
        RAW => {
            out.extend_from_slice(rest);
            return Ok(());
        }
        PACKED => {}
        _ => return Err(corrupt()),
    }
    let mut id = Digits::new(first_id);
    let mut tail: Option<Tail> = None;
    while let Some((&head, after)) = rest.split_first() {
        rest = after;
        if head & NEW_TS != 0 {
            let (ts, after) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
            tail = Some(Tail::new(i64::from_le_bytes(*ts)));
            rest = after;
        }
        let tail = tail.as_ref().ok_or_else(corrupt)?;
        let (len, after) = take_len(rest).ok_or_else(corrupt)?;
        let text = after.get(..len).ok_or_else(corrupt)?;
        rest = &after[len..];
        let kind = match head & STDERR {
            0 => OutputKind::Stdout,
            _ => OutputKind::Stderr,
        };
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(kind.json_prefix());
        out.extend_from_slice(text);
        out.extend_from_slice(tail.as_bytes());
        id.increment();
    }
    Ok(())
}

fn strip<'b>(bytes: &'b [u8], prefix: &[u8]) -> Option<&'b [u8]> {
    let head = bytes.get(..prefix.len())?;
    same(head, prefix).then(|| &bytes[prefix.len()..])
}

fn ends_with(bytes: &[u8], suffix: &[u8]) -> bool {
    bytes.len() >= suffix.len() && same(&bytes[bytes.len() - suffix.len()..], suffix)
}

/// Whether `a == b`, eight bytes at a time. Slice equality calls `memcmp`, which musl (the
/// agent's libc) runs a byte at a time: that was about a third of packing's time.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    a8.iter()
        .zip(b8)
        .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_rest.iter().zip(b_rest).all(|(x, y)| x == y)
}

/// `len` as LEB128: seven bits a byte, low bits first, the high bit set on all but the last.
fn put_len(out: &mut Vec<u8>, mut len: usize) {
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
}

fn take_len(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut len = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        len |= usize::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((len, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::EventWriter;
    use super::*;
    use crate::wire::StreamEvent;

    fn round_trip(batch: &[u8], first_id: u64) -> Vec<u8> {
        let mut record = Vec::new();
        pack(batch, first_id, &mut record);
        let mut back = Vec::new();
        unpack(&record, first_id, &mut back).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(batch),
            "from id {first_id}"
        );
        record
    }

    fn rendered(first_id: u64, render: impl FnOnce(&mut EventWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut next = first_id;
        render(&mut EventWriter::new(&mut buf, &mut next));
        buf
    }

    #[test]
    fn output_batches_pack_to_about_half_and_back_exactly() {
        let line = b"Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4YQ==";
        for first in [1, 9, 99_995, 123_456_789] {
            let batch = rendered(first, |w| {
                for i in 0..1000 {
                    let kind = if i % 7 == 0 {
                        OutputKind::Stderr
                    } else {
                        OutputKind::Stdout
                    };
                    // Timestamps change now and then within the batch, as across reads.
                    w.output_line(kind, line, 1_795_306_908_022 + i / 300);
                }
            });
            let record = round_trip(&batch, first);
            assert_eq!(record[0], PACKED);
            assert!(
                record.len() * 100 < batch.len() * 60,
                "{} of {}",
                record.len(),
                batch.len()
            );
        }
    }

    #[test]
    fn awkward_texts_and_timestamps_pack_exactly() {
        let batch = rendered(41, |w| {
            for (i, line) in [
                &b""[..],
                b"\"quoted\" \\ and \\\"",
                b"ends with a quote\"",
                b"\",\"timestamp\":5}",
                b"\xff\xfe not utf-8 \x01\x1f\t\r",
                "ünï".as_bytes(),
                b"}\\n\\n",
            ]
            .iter()
            .enumerate()
            {
                w.output_line(OutputKind::Stdout, line, [0, -1, i64::MIN, i64::MAX, 7, 7, 10][i]);
            }
            w.output_chunk(OutputKind::Stderr, b"a raw\nchunk\n", 3);
        });
        assert_eq!(round_trip(&batch, 41)[0], PACKED);
    }

    #[test]
    fn batches_that_do_not_fit_are_kept_raw() {
        let init = rendered(1, |w| w.event(&StreamEvent::init("x", 1)));
        let mixed = rendered(5, |w| {
            w.output_line(OutputKind::Stdout, b"a", 1);
            w.event(&StreamEvent::complete(1, 2));
        });
        for (batch, first) in [(&init, 1), (&mixed, 5)] {
            assert_eq!(round_trip(batch, first)[0], RAW);
        }
        // Ids that do not follow from the first id, and hand-made bytes, are kept as they are.
        let lines = rendered(5, |w| w.output_line(OutputKind::Stdout, b"a", 1));
        assert_eq!(round_trip(&lines, 6)[0], RAW);
        for odd in [
            &b"id: 1\ndata: {\"type\":\"stdout\",\"text\":\"a\",\"timestamp\":01}\n\n"[..],
            b"id: 1\ndata: {\"type\":\"stdout\",\"text\":\"a\",\"timestamp\":-0}\n\n",
            b"id: 1\ndata: {\"type\":\"stdout\",\"text\":\"a\",\"timestamp\":1}\n",
            b"id: 1\ndata: {\"type\":\"stdout\",\"text\":\"a\"}\n\n",
            b"id: 1\ndata: {\"type\":\"stdout\",\"text\":\"a\",\"timestamp\":1}\n\nid: 2",
            b"",
        ] {
            round_trip(odd, 1);
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let batch = rendered(3, |w| w.output_line(OutputKind::Stdout, b"hello", 9));
        let mut record = Vec::new();
        pack(&batch, 3, &mut record);
        for cut in 0..record.len() {
            let mut out = Vec::new();
            // Every strict prefix either fails or yields a prefix of the batch.
            if unpack(&record[..cut], 3, &mut out).is_ok() {
                assert!(batch.starts_with(&out));
            }
        }
        assert!(unpack(&[9], 3, &mut Vec::new()).is_err());
        assert!(
            unpack(&[PACKED, 0, 1, b'a'], 3, &mut Vec::new()).is_err(),
            "no timestamp yet"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(
            lines in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..20),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            first in 1u64..1_000_000,
        ) {
            let batch = rendered(first, |w| {
                for (i, line) in lines.iter().enumerate() {
                    w.output_line(OutputKind::Stdout, line, i as i64 / 3);
                }
            });
            round_trip(&batch, first);
            round_trip(&noise, first);
        }
    }
}
