//! `POST /files/upload`: the multipart framing and each `metadata` part as the handler reads
//! them, then the upload target each names (path expansion, owner, group, mode). Writes
//! nothing. Input: a multipart body with the boundary `XyZ`.
#![no_main]

use execd::agent::env::EnvMap;
use execd::agent::files::upload::Target;
use execd::agent::files::Files;
use execd::agent::http::fuzz_api::upload_metadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let Ok(metas) = rt.block_on(upload_metadata(
        "multipart/form-data; boundary=XyZ",
        data.to_vec(),
    )) else {
        return;
    };
    let mut env = EnvMap::new();
    env.insert("HOME".into(), "/home/user".into());
    env.insert("DATA".into(), "/data".into());
    let files = Files::new(env, "/workspace".into());
    for meta in metas {
        assert!(
            !meta.path.is_empty(),
            "a metadata part without a path was accepted"
        );
        if let Ok(target) = Target::new(&files, &meta) {
            assert!(
                target.path.is_absolute(),
                "{:?} resolved to {:?}",
                meta.path,
                target.path
            );
            assert!(!target.path.as_os_str().as_encoded_bytes().contains(&0));
            assert!(target.change.mode.is_none_or(|m| m <= 0o7777));
        }
    }
});
