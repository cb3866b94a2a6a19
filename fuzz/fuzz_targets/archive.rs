//! `POST /files/archive`: tar (and tar.gz) extraction must never put anything outside its
//! target directory: not through `..` or absolute names, not through symlinks already there
//! or made by the archive, not through hard links; and must leave no temp file behind.
//!
//! Input: a flags byte (bit 0: gzip the rest; bit 1: keep header checksums as they are),
//! then tar bytes. Checksums are recomputed by default, so mutations reach the extractor
//! instead of stopping at the checksum test. Each run extracts into a fresh directory:
//!
//! ```text
//! <tmp>/outside/        must stay empty
//! <tmp>/outside-file    must keep its content, mode and single link
//! <tmp>/target/         the extraction target, holding symlinks that point out:
//!        up -> ..   out -> ../outside   abs -> <tmp>/outside   file -> ../outside-file
//! ```
#![no_main]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use execd::agent::files::archive::extract;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, tar)) = data.split_first() else {
        return;
    };
    let mut tar = tar.to_vec();
    if flags & 2 == 0 {
        fix_checksums(&mut tar);
    }
    let body = if flags & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    } else {
        tar
    };

    let base = tempfile::Builder::new()
        .prefix("execd-fuzz-archive-")
        .tempdir()
        .expect("temp dir");
    let root = base.path();
    fs::create_dir(root.join("outside")).unwrap();
    fs::write(root.join("outside-file"), b"keep").unwrap();
    fs::set_permissions(root.join("outside-file"), fs::Permissions::from_mode(0o644)).unwrap();
    let target = root.join("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink("..", target.join("up")).unwrap();
    std::os::unix::fs::symlink("../outside", target.join("out")).unwrap();
    std::os::unix::fs::symlink(root.join("outside"), target.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside-file", target.join("file")).unwrap();

    let result = extract(&target, body.as_slice());

    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "outside-file", "target"],
        "escape beside the target ({result:?})"
    );
    assert_eq!(
        fs::read_dir(root.join("outside")).unwrap().count(),
        0,
        "escape into outside/ ({result:?})"
    );
    let meta = fs::symlink_metadata(root.join("outside-file")).unwrap();
    assert!(meta.is_file(), "outside-file replaced ({result:?})");
    assert_eq!(
        fs::read(root.join("outside-file")).unwrap(),
        b"keep",
        "outside-file written ({result:?})"
    );
    assert_eq!(meta.mode() & 0o7777, 0o644, "outside-file chmodded ({result:?})");
    assert_eq!(meta.nlink(), 1, "outside-file hard-linked ({result:?})");
    let meta = fs::symlink_metadata(&target).unwrap();
    assert!(meta.is_dir(), "target replaced ({result:?})");
    no_temp_files(&target);
    // Directories the archive made unsearchable must not stop the clean-up (as non-root).
    open_up(&target);
});

/// No `.…execd-…` temp file or link is left anywhere below `dir`.
fn no_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        assert!(
            !(name.starts_with('.') && name.contains("execd-")),
            "temp file left behind: {}",
            entry.path().display()
        );
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            no_temp_files(&entry.path());
        }
    }
}

fn open_up(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path());
        }
    }
}

/// Recomputes the checksum of every header block, walking the archive the way a tar reader
/// does (header, then the entry's data rounded up to 512 bytes).
fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let block = &mut tar[at..at + 512];
        if block.iter().all(|&b| b == 0) {
            at += 512;
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = entry_size(&block[124..136]);
        let Some(next) = size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .and_then(|s| s.checked_add(512 + at as u64))
        else {
            return;
        };
        at = match usize::try_from(next) {
            Ok(n) => n,
            Err(_) => return,
        };
    }
}

/// The size field: octal digits, or base-256 when the high bit of its first byte is set.
fn entry_size(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[4..].iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
    }
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| (b'0'..=b'7').contains(&b));
    digits.fold(0u64, |n, &b| n.wrapping_mul(8).wrapping_add(u64::from(b - b'0')))
}
