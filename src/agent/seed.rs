//! Seed files for init mode. `EXECD_SEED_FILES` names a manifest,
//! `[{"key":"f0","path":"/abs/path","mode":420}, …]`, whose files lie beside it, each named by
//! its key: a Kubernetes ConfigMap mounted as a directory, which is how sandboxd's Kubernetes
//! runtime hands a template's files to a pod. Before the entrypoint starts, init copies each
//! file to its absolute path: missing parents created, the bytes written to a temp file and
//! renamed over the target, the mode set (`mode` is decimal in JSON, as in Kubernetes; 0644
//! when absent).
//!
//! The whole manifest is checked before any file is written; a relative path, a `..`
//! component, or a key that is not a plain file name is refused. Read through a
//! `serde_json::Value`, as `init::pre_start_hook` is, to keep the agent small. Synchronous.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::files::atomic::{CreatedDirs, TempFile};
use super::files::FilesError;

/// The environment variable naming the manifest.
pub const SEED_FILES_ENV: &str = "EXECD_SEED_FILES";
/// A file's mode when its entry gives none.
const DEFAULT_MODE: u32 = 0o644;

/// One file to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    /// The file's name beside the manifest.
    pub key: String,
    /// Where it goes: absolute, without `..`.
    pub path: PathBuf,
    /// Its permission bits (at most 0o7777).
    pub mode: u32,
}

/// Why seeding failed; each names the manifest or the file.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The manifest could not be read.
    #[error("cannot read the seed manifest {}: {source}", path.display())]
    ReadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not a list of valid entries.
    #[error("seed manifest {}: {why}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the entry.
        why: String,
    },
    /// A listed file is missing beside the manifest.
    #[error("seed file {key:?} for {}: cannot read {}: {source}", target.display(), source_path.display())]
    ReadSource {
        /// The entry's key.
        key: String,
        /// Where it was to go.
        target: PathBuf,
        /// The file beside the manifest.
        source_path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The target could not be written.
    #[error("seed file {key:?}: cannot place {}: {source}", target.display())]
    Write {
        /// The entry's key.
        key: String,
        /// The target.
        target: PathBuf,
        /// Why.
        #[source]
        source: FilesError,
    },
}

/// Parses a manifest's text; `path` is only for messages.
pub fn parse(path: &Path, text: &[u8]) -> Result<Vec<SeedFile>, SeedError> {
    let bad = |why: String| SeedError::Manifest {
        path: path.to_owned(),
        why,
    };
    let value: Value = serde_json::from_slice(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let entries = value
        .as_array()
        .ok_or_else(|| bad("not a JSON array of {key, path, mode}".into()))?;
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| entry_of(entry).map_err(|why| bad(format!("entry {i}: {why}"))))
        .collect()
}

fn entry_of(entry: &Value) -> Result<SeedFile, String> {
    let key = entry
        .get("key")
        .and_then(Value::as_str)
        .ok_or("\"key\" is not a string")?;
    if key.is_empty() || key == "." || key == ".." || key.contains('/') {
        return Err(format!("key {key:?} is not a file name"));
    }
    let raw = entry
        .get("path")
        .and_then(Value::as_str)
        .ok_or("\"path\" is not a string")?;
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(format!("path {raw:?} is not absolute"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("path {raw:?} contains \"..\""));
    }
    if path.file_name().is_none() {
        return Err(format!("path {raw:?} names no file"));
    }
    let mode = match entry.get("mode").filter(|m| !m.is_null()) {
        None => DEFAULT_MODE,
        Some(m) => m
            .as_u64()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| format!("mode {m} is not a number from 0 to 4095 (0o7777)"))?
            as u32,
    };
    Ok(SeedFile {
        key: key.to_owned(),
        path,
        mode,
    })
}

/// Reads the manifest at `manifest` and places every file it lists; the first failure stops
/// it (files placed before stay).
pub fn place_all(manifest: &Path) -> Result<usize, SeedError> {
    let text = std::fs::read(manifest).map_err(|source| SeedError::ReadManifest {
        path: manifest.to_owned(),
        source,
    })?;
    let files = parse(manifest, &text)?;
    let dir = manifest.parent().unwrap_or(Path::new("/"));
    for file in &files {
        place(dir, file)?;
    }
    Ok(files.len())
}

/// Copies `dir/<key>` to the file's path: parents, temp file, fchmod, rename.
fn place(dir: &Path, file: &SeedFile) -> Result<(), SeedError> {
    let source_path = dir.join(&file.key);
    let bytes = std::fs::read(&source_path).map_err(|source| SeedError::ReadSource {
        key: file.key.clone(),
        target: file.path.clone(),
        source_path: source_path.clone(),
        source,
    })?;
    let write = |source| SeedError::Write {
        key: file.key.clone(),
        target: file.path.clone(),
        source,
    };
    let parent = file.path.parent().unwrap_or(Path::new("/"));
    CreatedDirs::create(parent).map_err(write)?.keep();
    let temp = TempFile::create_beside(&file.path, 0o600).map_err(write)?;
    let io = |op| {
        let path = temp.path().to_owned();
        move |e| write(FilesError::io(op, &path)(e))
    };
    temp.file().write_all(&bytes).map_err(io("write"))?;
    // fchmod rather than the create mode, which the umask would narrow.
    temp.file()
        .set_permissions(std::fs::Permissions::from_mode(file.mode))
        .map_err(io("chmod"))?;
    temp.commit(&file.path).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, json: &str) -> PathBuf {
        let path = dir.join("manifest.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn parses_keys_paths_and_decimal_modes() {
        let files = parse(
            Path::new("m"),
            br#"[{"key":"f0","path":"/etc/app/a.conf","mode":420},{"key":"f1","path":"/run.sh","mode":493},{"key":"f2","path":"/x"}]"#,
        )
        .unwrap();
        assert_eq!(files[0].path, PathBuf::from("/etc/app/a.conf"));
        assert_eq!(files[0].mode, 0o644);
        assert_eq!(files[1].mode, 0o755);
        assert_eq!(files[2].mode, DEFAULT_MODE);
    }

    #[test]
    fn refuses_relative_paths_dot_dot_bad_keys_and_modes() {
        for (json, needle) in [
            (r#"[{"key":"f0","path":"etc/x"}]"#, "not absolute"),
            (r#"[{"key":"f0","path":"/etc/../x"}]"#, "\"..\""),
            (r#"[{"key":"../f0","path":"/x"}]"#, "not a file name"),
            (r#"[{"key":"..","path":"/x"}]"#, "not a file name"),
            (r#"[{"key":"f0","path":"/"}]"#, "names no file"),
            (r#"[{"key":"f0","path":"/x","mode":65536}]"#, "mode"),
            (r#"[{"key":"f0","path":"/x","mode":"644"}]"#, "mode"),
            (r#"[{"path":"/x"}]"#, "key"),
            (r#"{"key":"f0"}"#, "not a JSON array"),
            ("[", "not JSON"),
        ] {
            let e = parse(Path::new("/seed/manifest.json"), json.as_bytes()).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(needle) && text.contains("/seed/manifest.json"),
                "{json}: {text}"
            );
        }
    }

    #[test]
    fn places_files_with_parents_and_modes() {
        let seed = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(seed.path().join("f0"), b"hello").unwrap();
        std::fs::write(seed.path().join("f1"), b"#!/bin/sh\n").unwrap();
        let (a, b) = (root.path().join("a/b/c.txt"), root.path().join("run.sh"));
        std::fs::write(&b, b"old").unwrap();
        let m = manifest(
            seed.path(),
            &format!(
                r#"[{{"key":"f0","path":"{}","mode":384}},{{"key":"f1","path":"{}","mode":493}}]"#,
                a.display(),
                b.display()
            ),
        );
        assert_eq!(place_all(&m).unwrap(), 2);
        assert_eq!(std::fs::read(&a).unwrap(), b"hello");
        assert_eq!(std::fs::read(&b).unwrap(), b"#!/bin/sh\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&a), 0o600);
        assert_eq!(mode(&b), 0o755);
        // Only the targets: no temp files left beside them.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_missing_source_or_an_unwritable_target_names_the_file() {
        let seed = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("t");
        let m = manifest(
            seed.path(),
            &format!(r#"[{{"key":"gone","path":"{}"}}]"#, target.display()),
        );
        let e = place_all(&m).unwrap_err().to_string();
        assert!(
            e.contains("\"gone\"") && e.contains(&target.display().to_string()),
            "{e}"
        );

        std::fs::write(seed.path().join("f0"), b"x").unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let under_a_file = root.path().join("file/t");
        let m = manifest(
            seed.path(),
            &format!(r#"[{{"key":"f0","path":"{}"}}]"#, under_a_file.display()),
        );
        let e = place_all(&m).unwrap_err().to_string();
        assert!(e.contains(&under_a_file.display().to_string()), "{e}");
        let e = place_all(&seed.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }
}
