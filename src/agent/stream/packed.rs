//! The spill file's record format: one record per journal batch, packed to about half the
//! size of its SSE bytes, and unpacked back to exactly those bytes.
//!
//! A batch of output events repeats everything but the text: `id: N`, the JSON around the
//! text, the timestamp. A packed record keeps only what varies (the stream, the timestamp when
//! it changes, the text as it was escaped), so a stream of short lines spills about half the
//! bytes, which is half the spill's cost (its page-cache writes are most of a stream's CPU) and
//! half the reads of a cursor that falls behind. The batch's writer records its [`Shape`] as it
//! renders (where each text lies, which stream, which timestamp), so packing copies the texts
//! out without parsing anything; a batch with any event that is not plain output (`init`,
//! errors, kernel results) has no shape and is kept raw. Unpacking renders each event again
//! from the same templates the writer used (`render`), so it gives back exactly the appended
//! bytes. Synchronous, no I/O.
//!
//! ```text
//! record  = RAW sse-bytes | PACKED event*
//! event   = head [timestamp: i64 LE, when head has NEW_TS] len: LEB128 text: len bytes
//! head    = STDERR? | NEW_TS?        (the first event always has NEW_TS)
//! ```
//! Ids are not stored: a batch's events are numbered from its first id, which the journal's
//! batch index holds.

use std::io;
use std::ops::Range;

use super::render::{Digits, Tail};
use super::OutputKind;

const RAW: u8 = 0;
const PACKED: u8 = 1;
const STDERR: u8 = 1;
const NEW_TS: u8 = 2;

/// How a batch of output events was rendered, recorded by its writer: where each event's
/// escaped text lies in the batch, and its head (stream, new timestamp).
#[derive(Debug, Default)]
pub(super) struct Shape {
    events: Vec<Span>,
    /// The timestamp of each event whose head has NEW_TS, in order.
    stamps: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
    head: u8,
}

impl Shape {
    /// Records an output event whose escaped text is `text` of the batch; `new_ts` when its
    /// timestamp differs from the previous event's (always, for a batch's first event). False
    /// when the batch is too large to describe (over 4 GiB), and so must be kept raw.
    pub(super) fn output(&mut self, kind: OutputKind, new_ts: Option<i64>, text: Range<usize>) -> bool {
        let (Ok(start), Ok(len)) = (u32::try_from(text.start), u32::try_from(text.len())) else {
            return false;
        };
        let mut head = match kind {
            OutputKind::Stdout => 0,
            OutputKind::Stderr => STDERR,
        };
        if let Some(ts) = new_ts {
            head |= NEW_TS;
            self.stamps.push(ts);
        }
        self.events.push(Span { start, len, head });
        true
    }
}

/// Appends the record of `batch` to `out`: packed from its writer's `shape`, or raw when it
/// has none.
pub(super) fn pack(batch: &[u8], shape: Option<&Shape>, out: &mut Vec<u8>) {
    let Some(shape) = shape.filter(|s| !s.events.is_empty()) else {
        out.push(RAW);
        out.extend_from_slice(batch);
        return;
    };
    out.push(PACKED);
    let mut stamps = shape.stamps.iter();
    for span in &shape.events {
        out.push(span.head);
        if span.head & NEW_TS != 0 {
            // The writer pushed one stamp for each NEW_TS head.
            out.extend_from_slice(&stamps.next().copied().unwrap_or_default().to_le_bytes());
        }
        put_len(out, span.len as usize);
        let start = span.start as usize;
        out.extend_from_slice(&batch[start..start + span.len as usize]);
    }
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

    /// Packs `batch` by `shape`, unpacks it and checks it came back exactly; the record.
    fn round_trip(batch: &[u8], shape: Option<&Shape>, first_id: u64) -> Vec<u8> {
        let mut record = Vec::new();
        pack(batch, shape, &mut record);
        let mut back = Vec::new();
        unpack(&record, first_id, &mut back).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(batch),
            "from id {first_id}"
        );
        record
    }

    /// A batch rendered by a fresh writer, and the shape it recorded.
    fn rendered(first_id: u64, render: impl FnOnce(&mut EventWriter<'_>)) -> (Vec<u8>, Option<Shape>) {
        let mut buf = Vec::new();
        let mut next = first_id;
        let mut writer = EventWriter::new(&mut buf, &mut next);
        render(&mut writer);
        let shape = writer.into_shape();
        (buf, shape)
    }

    #[test]
    fn output_batches_pack_to_about_half_and_back_exactly() {
        let line = b"Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4YQ==";
        for first in [1, 9, 99_995, 123_456_789] {
            let (batch, shape) = rendered(first, |w| {
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
            let record = round_trip(&batch, shape.as_ref(), first);
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
        let (batch, shape) = rendered(41, |w| {
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
        assert_eq!(round_trip(&batch, shape.as_ref(), 41)[0], PACKED);
    }

    #[test]
    fn batches_with_other_events_are_kept_raw() {
        let init = rendered(1, |w| w.event(&StreamEvent::init("x", 1)));
        let mixed = rendered(5, |w| {
            w.output_line(OutputKind::Stdout, b"a", 1);
            w.event(&StreamEvent::complete(1, 2));
        });
        let after = rendered(5, |w| {
            w.event(&StreamEvent::complete(1, 2));
            w.output_line(OutputKind::Stdout, b"a", 1);
        });
        for ((batch, shape), first) in [(&init, 1), (&mixed, 5), (&after, 5)] {
            assert!(shape.is_none());
            assert_eq!(round_trip(batch, None, first)[0], RAW);
        }
        round_trip(b"", None, 1);
    }

    #[test]
    fn a_writer_on_a_used_buffer_records_its_own_batch() {
        let mut buf = b"earlier bytes".to_vec();
        let mut next = 7;
        let mut writer = EventWriter::new(&mut buf, &mut next);
        writer.output_line(OutputKind::Stdout, b"one", 1);
        writer.output_line(OutputKind::Stderr, b"two", 2);
        let shape = writer.into_shape();
        let batch = &buf[b"earlier bytes".len()..];
        assert_eq!(round_trip(batch, shape.as_ref(), 7)[0], PACKED);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let (batch, shape) = rendered(3, |w| w.output_line(OutputKind::Stdout, b"hello", 9));
        let mut record = Vec::new();
        pack(&batch, shape.as_ref(), &mut record);
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
        fn any_output_round_trips(
            lines in proptest::collection::vec((proptest::collection::vec(proptest::num::u8::ANY, 0..40), proptest::bool::ANY), 0..20),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            first in 1u64..1_000_000,
        ) {
            let (batch, shape) = rendered(first, |w| {
                for (i, (line, chunk)) in lines.iter().enumerate() {
                    let kind = if i % 3 == 1 { OutputKind::Stderr } else { OutputKind::Stdout };
                    match chunk {
                        true => w.output_chunk(kind, line, i as i64 / 3),
                        false => w.output_line(kind, line, i as i64 / 3),
                    }
                }
            });
            round_trip(&batch, shape.as_ref(), first);
            round_trip(&noise, None, first);
        }
    }
}
