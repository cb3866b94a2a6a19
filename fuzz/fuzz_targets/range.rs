//! `GET /files/download` headers: `Range` (against a file size), `If-Range`,
//! `If-None-Match`, and the `Content-Disposition` built from a file name.
//! Input: 8 bytes of file size, then the header text (also used as the file name).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use execd::agent::files::download::{
    content_disposition, http_date, if_range_holds, none_match, parse_range,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, rest) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap());
    // Small sizes are where the edge cases are; keep the raw value for one in four inputs.
    let size = if size & 3 == 0 { size } else { size % 4096 };

    // The handler reads headers with `HeaderValue::to_str`: visible ASCII and tabs only.
    if let Some(header) = std::str::from_utf8(rest)
        .ok()
        .filter(|s| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        if let Ok((first, last)) = parse_range(header, size) {
            assert!(first <= last, "{header:?}: first {first} > last {last}");
            assert!(last < size, "{header:?}: last {last} past a file of {size}");
        }
        let etag = "\"1a-2b-3c\"";
        // Any mtime a file can have (archives set them from their headers).
        let date = http_date(UNIX_EPOCH + Duration::from_secs(size.min(i64::MAX as u64)));
        if if_range_holds(header, etag, &date) {
            let h = header.trim();
            assert!(
                h == etag || h == date,
                "If-Range {header:?} held for neither validator"
            );
        }
        let _ = none_match(header, etag);
    }

    // A file may have any name; its Content-Disposition must always be a valid header.
    let name = String::from_utf8_lossy(rest);
    let cd = content_disposition(&name);
    assert!(
        cd.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
        "Content-Disposition of {name:?} is not a valid header value: {cd:?}"
    );
});
