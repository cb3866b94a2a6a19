//! PTY WebSocket client frames (binary `0x00` stdin, JSON control frames, signal names) and
//! the replay ring behind `?since=`. Input: a kind byte, then the frame.
#![no_main]

use execd::agent::http::fuzz_api::{pty_frame, PtyInput};
use execd::agent::pty::parse_signal;
use execd::agent::pty::ring::{Ring, Stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, frame)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            let input = pty_frame(true, frame).expect("binary frames always decode");
            match (frame.first(), input) {
                (Some(0), PtyInput::Stdin(bytes)) => assert_eq!(bytes, &frame[1..]),
                (_, PtyInput::Invalid(_)) => assert_ne!(frame.first(), Some(&0)),
                (_, other) => panic!("binary frame {frame:?} decoded to {other:?}"),
            }
        }
        1 => match pty_frame(false, frame) {
            Some(PtyInput::Signal(name)) => {
                let _ = parse_signal(&name);
            }
            Some(PtyInput::Resize(..) | PtyInput::Stdin(_) | PtyInput::Ping | PtyInput::Invalid(_))
            | None => {}
            Some(other) => panic!("text frame decoded to {other:?}"),
        },
        _ => ring(frame),
    }
});

/// Pushes bytes into a small ring and reads it back from fuzzed offsets: every chunk starts
/// where asked (or at the oldest retained byte), lies within what was written, and a reader
/// that keeps up sees every byte once.
fn ring(ops: &[u8]) {
    // A reader that drains after every push of at most the capacity loses nothing.
    let mut ring = Ring::new(64);
    let mut written: Vec<u8> = Vec::new();
    let mut reader = 0u64;
    let mut seen: Vec<u8> = Vec::new();
    for (i, op) in ops.chunks(2).enumerate() {
        let (a, b) = (op[0], op.get(1).copied().unwrap_or(0));
        if a & 1 == 0 {
            let stream = if a & 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            let bytes: Vec<u8> = (0..b % 65).map(|j| (i as u8).wrapping_add(j)).collect();
            ring.push(stream, &bytes);
            written.extend_from_slice(&bytes);
        } else {
            // `since` from a client: anything, including past the end.
            let since = u64::from(b) * u64::from(a >> 1);
            let (start, replay) = ring.replay(since);
            assert!(start >= ring.oldest() && start <= ring.total());
            assert_eq!(replay, written[start as usize..]);
            if let Some(c) = ring.chunk(since, usize::from(a >> 1)) {
                assert!(c.start >= since.min(ring.total()).max(ring.oldest()));
                assert!(c.end() <= ring.total() && !c.bytes.is_empty());
                assert_eq!(c.bytes, written[c.start as usize..c.end() as usize]);
            }
        }
        assert_eq!(ring.total(), written.len() as u64);
        // The reader keeps up each step with chunks of 7 bytes.
        while let Some(c) = ring.chunk(reader, 7) {
            assert_eq!(c.start, reader, "a reader that keeps up never skips");
            reader = c.end();
            seen.extend_from_slice(&c.bytes);
        }
    }
    assert_eq!(seen, written);
}
