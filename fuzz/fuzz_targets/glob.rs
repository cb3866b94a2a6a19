//! The glob matcher of `GET /files/search`: a pattern, a NUL, then a base name.
#![no_main]

use execd::agent::files::glob::Glob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = text.split_once('\0').unwrap_or((text, "file.txt"));
    // Search matches base names: never empty, never with `/` or NUL.
    if name.is_empty() || name.contains(['/', '\0']) {
        return;
    }
    let Ok(glob) = Glob::new(pattern) else {
        return;
    };
    let matched = glob.matches(name);
    // A pattern without any special character is a literal: it matches itself and only that.
    if !pattern.contains(['*', '?', '[', ']', '{', '}', '\\']) {
        assert_eq!(matched, pattern == name, "literal {pattern:?} against {name:?}");
        assert!(glob.matches(pattern));
    }
    // `*` alone matches every base name.
    if pattern == "*" {
        assert!(matched);
    }
});
