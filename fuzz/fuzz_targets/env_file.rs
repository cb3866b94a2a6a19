//! The `EXECD_ENVS` file (re-read for every command, session and context).
#![no_main]

use execd::agent::env::{parse_env_file, valid_name, EnvMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // execd reads the file with `read_to_string`: not UTF-8 is a read error, not a parse.
    let Ok(content) = std::str::from_utf8(data) else {
        return;
    };
    let mut env = EnvMap::new();
    env.insert("HOME".into(), "/root".into());
    env.insert("PATH".into(), "/usr/bin:/bin".into());
    parse_env_file(content, &mut env);
    for (k, v) in &env {
        assert!(valid_name(k), "invalid name {k:?} accepted");
        // The environment must stay passable to execve.
        assert!(!k.contains('\0') && !v.contains('\0') || content.contains('\0'));
        // `$VAR` expansion must not let a small file grow a value without bound (`A=$A$A`
        // doubling): expansion adds at most what execve takes for a string (128 KiB).
        assert!(
            v.len() <= (128 << 10) + content.len(),
            "{k} grew to {} bytes from a {}-byte file",
            v.len(),
            content.len()
        );
    }
});
