//! The query strings of the file routes (`Params`: repeated names, strict percent-decoding).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // hyper hands routes a URI whose query is ASCII.
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pairs) = execd::agent::http::fuzz_api::query(q) {
        // Decoding never produces more text than it was given.
        let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total <= q.len(), "{q:?} decoded to {total} bytes");
    }
});
