//! Resuming an SSE stream: the `Last-Event-ID` header parsed as the routes parse it, then a
//! journal cursor placed after that id. Whatever the journal's shape (batches, long lines
//! that spill it to disk) and whatever the id, the stream resumes with exactly the events after
//! it, each once, in order, and ends after the terminal event.
//! Input: `<Last-Event-ID bytes>\n<ops>`; each op byte writes a batch of events.
#![no_main]

use std::sync::OnceLock;

use execd::agent::http::fuzz_api::last_event_id;
use execd::agent::stream::{Journal, OutputKind};
use execd::wire::StreamEvent;
use futures_util_free::collect;
use libfuzzer_sys::fuzz_target;

mod futures_util_free {
    use execd::agent::stream::Cursor;

    /// Every byte of the cursor until it ends.
    pub fn collect(mut cursor: Cursor) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            cursor.seek().await.expect("seek");
            let mut out = Vec::new();
            while let Some(chunk) = cursor.next_chunk().await {
                out.extend_from_slice(&chunk.expect("journal read"));
            }
            out
        })
    }
}

fn spill_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, ops) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Some(after) = last_event_id(header) else {
        return; // not a header value hyper would pass on
    };
    let Some(after) = after else {
        return; // a 400
    };

    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let journal = Journal::new(spill_dir().join(format!("{n}.sse")));
    let mut total = 0u64;
    for (i, &op) in ops.iter().take(64).enumerate() {
        // Low bits: events in the batch; high bit: long lines (64 KiB), so that a few ops
        // push the journal past its 1 MiB memory cap and into its spill file.
        let count = u64::from(op & 0x0f) + 1;
        let len = if op & 0x80 != 0 {
            64 << 10
        } else {
            usize::from(op >> 4) * 3
        };
        let line: Vec<u8> = (0..len).map(|j| b"ab\n\"\\\x01 z"[(i + j) % 8]).collect();
        journal.write_bulk(count as usize, |w| {
            for _ in 0..count {
                w.output_line(OutputKind::Stdout, &line, i as i64);
            }
        });
        total += count;
    }
    journal.finish(&StreamEvent::complete(1, 0));
    total += 1;

    let bytes = collect(journal.cursor(Some(after)));
    let text = std::str::from_utf8(&bytes).expect("SSE is UTF-8");
    let mut expected = if after == 0 { 1 } else { after.saturating_add(1) };
    for frame in text.split_terminator("\n\n") {
        let (id, data) = frame
            .strip_prefix("id: ")
            .and_then(|f| f.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an SSE event: {frame:?}"));
        assert_eq!(
            id.parse::<u64>().ok(),
            Some(expected),
            "after {after}: event order"
        );
        serde_json::from_str::<serde_json::Value>(data).expect("event data is JSON");
        expected += 1;
    }
    let resumed_from = if after == 0 { 1 } else { after.saturating_add(1) };
    let want = total.saturating_sub(resumed_from - 1);
    assert_eq!(
        expected - resumed_from,
        want,
        "after {after} of {total}: events missing"
    );
});
