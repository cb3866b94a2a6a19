//! Rendering events as SSE bytes: the hot path of command streaming.
//!
//! An [`EventWriter`] lives for one journal batch (one read of a pipe, usually). Output events
//! are written by hand rather than through serde, and what a batch's events share is rendered
//! once per batch, not once per event: the id's digits are incremented in place, and the
//! `timestamp` tail is reused while the timestamp stays the same (every line of one read shares
//! it). Text that is plain ASCII needing no escape (the common case) is found in one pass and
//! copied as is; anything else goes through UTF-8 validation and JSON escaping. Unit tests check
//! the bytes against the plain way (every number formatted, every text validated and escaped
//! whole), and that they parse to the event serde would write. The writer also records the
//! batch's [`Shape`], from which the spill thread packs it (`packed`). Synchronous, no I/O.

use crate::wire::StreamEvent;

use super::packed::Shape;
use super::OutputKind;

impl OutputKind {
    /// The start of an output event's JSON, up to the opening quote of its text.
    pub(super) fn json_prefix(self) -> &'static [u8] {
        match self {
            OutputKind::Stdout => br#"{"type":"stdout","text":""#,
            OutputKind::Stderr => br#"{"type":"stderr","text":""#,
        }
    }
}

/// Renders events into SSE bytes; handed to the closure of [`super::Journal::write`].
pub struct EventWriter<'a> {
    buf: &'a mut Vec<u8>,
    next_id: &'a mut u64,
    /// The decimal digits of `*next_id`, kept in step with it.
    id: Digits,
    /// The last timestamp rendered, and its `","timestamp":T}` with the blank line.
    tail: Option<(i64, Tail)>,
    /// Where `buf` stood when this writer started: the batch is `buf[base..]`.
    base: usize,
    /// The batch's shape while it holds only output events; `None` once it holds another.
    shape: Option<Shape>,
}

impl<'a> EventWriter<'a> {
    /// A writer appending to `buf` events numbered from `*next_id`, which it advances.
    pub(super) fn new(buf: &'a mut Vec<u8>, next_id: &'a mut u64) -> Self {
        let id = Digits::new(*next_id);
        let base = buf.len();
        Self {
            buf,
            next_id,
            id,
            tail: None,
            base,
            shape: Some(Shape::default()),
        }
    }

    /// The shape of what was written, when it was only output events (see `packed`).
    pub(super) fn into_shape(self) -> Option<Shape> {
        self.shape
    }

    /// Appends an arbitrary event.
    pub fn event(&mut self, event: &StreamEvent) {
        self.frame_start();
        self.shape = None;
        // Serializing a struct of strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.buf, event);
        self.buf.extend_from_slice(b"\n\n");
    }

    /// Appends a `stdout`/`stderr` event whose text is `line`. An empty line is sent as `"\n"`,
    /// as upstream does, so that blank lines stay visible. Bytes that are not UTF-8 become U+FFFD.
    pub fn output_line(&mut self, kind: OutputKind, line: &[u8], timestamp: i64) {
        self.output_chunk(kind, if line.is_empty() { b"\n" } else { line }, timestamp);
    }

    /// Appends a `stdout`/`stderr` event with `chunk` as its text, exactly as read (kernels
    /// send raw chunks, newlines included). Bytes that are not UTF-8 become U+FFFD.
    pub fn output_chunk(&mut self, kind: OutputKind, chunk: &[u8], timestamp: i64) {
        self.frame_start();
        self.buf.extend_from_slice(kind.json_prefix());
        let start = self.buf.len() - self.base;
        text_into(self.buf, chunk);
        let text = start..self.buf.len() - self.base;
        let new_ts = self.tail.as_ref().is_none_or(|(ts, _)| *ts != timestamp);
        if new_ts {
            self.tail = Some((timestamp, Tail::new(timestamp)));
        }
        if let Some((_, tail)) = &self.tail {
            self.buf.extend_from_slice(tail.as_bytes());
        }
        if let Some(shape) = &mut self.shape {
            if !shape.output(kind, new_ts.then_some(timestamp), text) {
                self.shape = None;
            }
        }
    }

    fn frame_start(&mut self) {
        self.buf.extend_from_slice(b"id: ");
        self.buf.extend_from_slice(self.id.as_bytes());
        self.buf.extend_from_slice(b"\ndata: ");
        *self.next_id += 1;
        self.id.increment();
    }
}

/// The decimal digits of a `u64`, right-aligned in a fixed buffer, incremented in place.
pub(super) struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    pub(super) fn new(v: u64) -> Self {
        let mut buf = [b'0'; 20];
        let start = buf.len() - itoa_u64(v, &mut buf).len();
        Self { buf, start }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Adds one: trailing nines become zeros and the digit before them goes up (a new leading
    /// `1` when they were all nines). Twenty digits hold every `u64`; the id it mirrors would
    /// overflow first, so the carry never runs past the buffer.
    pub(super) fn increment(&mut self) {
        for i in (0..self.buf.len()).rev() {
            if self.buf[i] != b'9' {
                self.buf[i] += 1;
                self.start = self.start.min(i);
                return;
            }
            self.buf[i] = b'0';
        }
    }
}

/// The end of an output event: `","timestamp":T}` and the blank line.
pub(super) struct Tail {
    buf: [u8; 40],
    len: usize,
}

impl Tail {
    pub(super) fn new(timestamp: i64) -> Self {
        const HEAD: &[u8] = b"\",\"timestamp\":";
        let mut buf = [0u8; 40];
        buf[..HEAD.len()].copy_from_slice(HEAD);
        let mut len = HEAD.len();
        let mut digits = [0u8; 20];
        for &b in itoa_i64(timestamp, &mut digits).as_bytes().iter().chain(b"}\n\n") {
            buf[len] = b;
            len += 1;
        }
        Self { buf, len }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Appends `bytes` as the inside of a JSON string; bytes that are not UTF-8 become U+FFFD.
/// The plain ASCII prefix (all of a typical line) is found eight bytes at a time and copied as
/// is; the rest, from the first byte that needs escaping or is not ASCII, is validated and
/// escaped. Cutting there is exact: the prefix is ASCII, so it ends on a character boundary.
fn text_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut plain = 0;
    while let Some(word) = bytes.get(plain..plain + 8) {
        // The slice is exactly 8 bytes long.
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or([0; 8]));
        if needs_escape(word) || word & HIGH != 0 {
            break;
        }
        plain += 8;
    }
    while plain < bytes.len() && matches!(bytes[plain], 0x20..=0x7f) && !is_special(bytes[plain]) {
        plain += 1;
    }
    out.extend_from_slice(&bytes[..plain]);
    let rest = &bytes[plain..];
    if rest.is_empty() {
        return;
    }
    match std::str::from_utf8(rest) {
        Ok(text) => escape_json_into(out, text),
        Err(_) => escape_json_into(out, &String::from_utf8_lossy(rest)),
    }
}

fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\'
}

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = ONES << 7;

/// Writes `s` as the inside of a JSON string.
pub fn escape_json_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Most output needs no escaping: skip it eight bytes at a time.
        if let Some(word) = bytes.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes in `w` is a control character, `"` or `\`. Uses the classic
/// "some byte is below n" test, `(w - n * ONES) & !w & HIGH`, which never misses one (n <= 128);
/// the caller checks flagged words byte by byte, so the answer only needs no false negatives.
fn needs_escape(w: u64) -> bool {
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let control = below(w, 0x20);
    let quote = below(w ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(w ^ (ONES * u64::from(b'\\')), 1);
    control | quote | backslash != 0
}

/// `v` in decimal, at the end of `buf`.
fn itoa_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

fn itoa_i64(v: i64, buf: &mut [u8; 20]) -> &str {
    let len = itoa_u64(v.unsigned_abs(), buf).len();
    let mut i = buf.len() - len;
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EventType;

    /// `line` rendered as event `id` by a fresh writer.
    fn render(kind: OutputKind, line: &[u8], id: u64, ts: i64) -> String {
        let mut buf = Vec::new();
        let mut next = id;
        EventWriter::new(&mut buf, &mut next).output_line(kind, line, ts);
        assert_eq!(next, id + 1);
        String::from_utf8(buf).unwrap()
    }

    /// The bytes the wire has always carried for an output event: the whole text validated
    /// (lossily) and then escaped, every number formatted afresh.
    fn reference(kind: &str, line: &[u8], id: u64, ts: i64) -> String {
        let line = if line.is_empty() { b"\n" } else { line };
        let mut text = Vec::new();
        escape_json_into(&mut text, &String::from_utf8_lossy(line));
        let text = String::from_utf8(text).unwrap();
        format!("id: {id}\ndata: {{\"type\":\"{kind}\",\"text\":\"{text}\",\"timestamp\":{ts}}}\n\n")
    }

    /// What serde makes of the event's data line.
    fn parsed(rendered: &str, id: u64) -> StreamEvent {
        let data = rendered
            .strip_prefix(&format!("id: {id}\ndata: "))
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    fn serde_event(kind: EventType, line: &[u8], ts: i64) -> StreamEvent {
        let text = if line.is_empty() {
            "\n".to_owned()
        } else {
            String::from_utf8_lossy(line).into_owned()
        };
        StreamEvent {
            text: Some(text),
            ..StreamEvent::new(kind, ts)
        }
    }

    const SAMPLES: [&[u8]; 7] = [
        b"plain",
        b"",
        b"q\"uote\\ tab\t ctl\x01\x1f",
        b"\xff\xfebad",
        "ünï".as_bytes(),
        b"eight ok then \"quote\" and \xc3\xa9 and \xff",
        b"0123456789abcdef\x7f\x7f\x08\x0c",
    ];

    #[test]
    fn hand_written_output_event_matches_serde() {
        for line in SAMPLES {
            let text = render(OutputKind::Stderr, line, 7, -5);
            assert_eq!(parsed(&text, 7), serde_event(EventType::Stderr, line, -5));
            assert_eq!(text, reference("stderr", line, 7, -5), "{line:?}");
        }
    }

    #[test]
    fn every_byte_at_every_position_renders_as_before() {
        // Each byte value at each offset of a line spanning two words and a tail: the plain
        // prefix must end exactly where escaping or validation is first needed.
        for b in 0u8..=0xff {
            for pos in 0..19 {
                let mut line = vec![b'a'; 19];
                line[pos] = b;
                let mut fast = Vec::new();
                text_into(&mut fast, &line);
                let mut slow = Vec::new();
                escape_json_into(&mut slow, &String::from_utf8_lossy(&line));
                assert_eq!(fast, slow, "byte {b:#x} at {pos}");
            }
        }
    }

    #[test]
    fn ids_and_timestamps_carry_across_a_batch() {
        // Ids across every carry (9 → 10, 99 → 100, …) and timestamps changing mid-batch.
        for first in [1u64, 8, 97, 995, 99_999_998, u64::MAX - 7] {
            let mut buf = Vec::new();
            let mut next = first;
            let mut w = EventWriter::new(&mut buf, &mut next);
            let stamps = [0i64, 0, -1, i64::MIN, i64::MAX, 1_795_306_908_022];
            for (i, ts) in stamps.iter().enumerate() {
                w.output_line(OutputKind::Stdout, format!("l{i}").as_bytes(), *ts);
            }
            w.event(&StreamEvent::init("x", 5));
            assert_eq!(next, first + 7);
            let text = String::from_utf8(buf).unwrap();
            let mut expected = String::new();
            for (i, ts) in stamps.iter().enumerate() {
                expected += &reference("stdout", format!("l{i}").as_bytes(), first + i as u64, *ts);
            }
            expected += &format!(
                "id: {}\ndata: {}\n\n",
                first + 6,
                serde_json::to_string(&StreamEvent::init("x", 5)).unwrap()
            );
            assert_eq!(text, expected, "from {first}");
        }
    }

    #[test]
    fn escapes_every_ascii_byte_at_every_position_of_a_word() {
        for b in 0u8..0x80 {
            for pos in 0..17 {
                let mut text = vec![b'a'; 17];
                text[pos] = b;
                let text = String::from_utf8(text).unwrap();
                let mut json = vec![b'"'];
                escape_json_into(&mut json, &text);
                json.push(b'"');
                let back: String = serde_json::from_slice(&json).unwrap();
                assert_eq!(back, text, "byte {b:#x} at {pos}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_parses_back_to_itself(s in "(?s).{0,40}", noise in proptest::collection::vec(0u8..0x80, 0..40)) {
            // Arbitrary text, and ASCII dense in control characters, quotes and backslashes.
            for text in [s, String::from_utf8(noise).unwrap()] {
                let mut json = vec![b'"'];
                escape_json_into(&mut json, &text);
                json.push(b'"');
                let back: String = serde_json::from_slice(&json).unwrap();
                proptest::prop_assert_eq!(back, text);
            }
        }

        #[test]
        fn rendered_line_is_the_same_bytes_as_before(line in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let text = render(OutputKind::Stdout, &line, 41, 3);
            proptest::prop_assert_eq!(parsed(&text, 41), serde_event(EventType::Stdout, &line, 3));
            proptest::prop_assert_eq!(text, reference("stdout", &line, 41, 3));
        }
    }
}
