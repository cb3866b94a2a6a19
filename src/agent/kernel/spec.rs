//! Jupyter kernelspec discovery: `kernels/<name>/kernel.json` under the standard data dirs
//! (JUPYTER_PATH, JUPYTER_DATA_DIR, ~/.local/share/jupyter, /usr/local/share/jupyter,
//! /usr/share/jupyter) and under the prefix of every `python3` on PATH (where a venv's
//! ipykernel installs its spec). Synchronous; runs at start and on demand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::agent::env::EnvMap;

/// How a kernel wants to be interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// SIGINT to the kernel process.
    Signal,
    /// `interrupt_request` on the control channel.
    Message,
}

/// A usable kernelspec.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// Directory name, e.g. `python3`.
    pub name: String,
    /// Lowercased language, e.g. `python`.
    pub language: String,
    /// Display name.
    pub display_name: String,
    /// Command line; `{connection_file}` is substituted. argv[0] is already resolved.
    pub argv: Vec<String>,
    /// Extra environment for the kernel.
    pub env: BTreeMap<String, String>,
    /// How to interrupt it.
    pub interrupt_mode: InterruptMode,
}

#[derive(Deserialize)]
struct KernelJson {
    argv: Vec<String>,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    interrupt_mode: Option<String>,
}

/// Finds every kernelspec visible with environment `env`; the first spec of a name wins, in
/// Jupyter's search order.
pub fn discover(env: &EnvMap) -> Vec<KernelSpec> {
    let mut specs: Vec<KernelSpec> = Vec::new();
    for (dir, prefix) in search_dirs(env) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if specs.iter().any(|s| s.name == name) {
                continue;
            }
            if let Some(spec) = load(&entry.path().join("kernel.json"), &name, prefix.as_deref(), env) {
                specs.push(spec);
            }
        }
    }
    specs
}

fn load(path: &Path, name: &str, prefix: Option<&Path>, env: &EnvMap) -> Option<KernelSpec> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: KernelJson = serde_json::from_str(&text).ok()?;
    let mut argv = json.argv;
    let first = argv.first()?.clone();
    // Jupyter runs a bare `python`/`python3` as its own interpreter; for us that is the
    // interpreter of the prefix the spec was found under, else the first on PATH.
    let resolved = if first.starts_with('/') {
        Path::new(&first).exists().then(|| PathBuf::from(&first))
    } else {
        let from_prefix = prefix
            .filter(|_| first.starts_with("python"))
            .map(|p| p.join("bin").join(&first))
            .filter(|p| p.exists());
        from_prefix.or_else(|| {
            crate::agent::env::resolve_program(&first, env.get("PATH").map(String::as_str), Path::new("/"))
        })
    }?;
    argv[0] = resolved.to_string_lossy().into_owned();
    Some(KernelSpec {
        name: name.to_owned(),
        language: json.language.to_lowercase(),
        display_name: json.display_name,
        argv,
        env: json.env,
        interrupt_mode: match json.interrupt_mode.as_deref() {
            Some("message") => InterruptMode::Message,
            _ => InterruptMode::Signal,
        },
    })
}

/// `(kernels dir, python prefix it belongs to)` in search order.
fn search_dirs(env: &EnvMap) -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut dirs = Vec::new();
    let mut push = |dir: PathBuf, prefix: Option<PathBuf>| {
        if !dirs.iter().any(|(d, _)| d == &dir) {
            dirs.push((dir, prefix));
        }
    };
    if let Some(path) = env.get("JUPYTER_PATH") {
        for p in path.split(':').filter(|p| !p.is_empty()) {
            push(Path::new(p).join("kernels"), None);
        }
    }
    if let Some(d) = env.get("JUPYTER_DATA_DIR") {
        push(Path::new(d).join("kernels"), None);
    }
    if let Some(home) = env.get("HOME") {
        push(Path::new(home).join(".local/share/jupyter/kernels"), None);
    }
    // Prefixes of the python3 interpreters on PATH (a venv's ipykernel puts its spec there).
    if let Some(path) = env.get("PATH") {
        for dir in path.split(':').filter(|d| d.starts_with('/')) {
            let python = Path::new(dir).join("python3");
            if python.exists() {
                if let Some(prefix) = Path::new(dir).parent() {
                    push(prefix.join("share/jupyter/kernels"), Some(prefix.to_path_buf()));
                }
            }
        }
    }
    push(
        PathBuf::from("/usr/local/share/jupyter/kernels"),
        Some(PathBuf::from("/usr/local")),
    );
    push(
        PathBuf::from("/usr/share/jupyter/kernels"),
        Some(PathBuf::from("/usr")),
    );
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_specs_in_jupyter_path_and_resolves_python() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("python3"), "").unwrap();
        let spec_dir = root.path().join("venv/share/jupyter/kernels/python3");
        std::fs::create_dir_all(&spec_dir).unwrap();
        std::fs::write(
            spec_dir.join("kernel.json"),
            r#"{"argv":["python3","-m","ipykernel_launcher","-f","{connection_file}"],"display_name":"Python 3","language":"python"}"#,
        )
        .unwrap();
        let other = root.path().join("jp/kernels/ir");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(
            other.join("kernel.json"),
            r#"{"argv":["/bin/sh","x"],"language":"R","interrupt_mode":"message"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("jp/kernels/broken")).unwrap();
        std::fs::write(root.path().join("jp/kernels/broken/kernel.json"), "{nope").unwrap();

        let env: EnvMap = [
            ("PATH".to_string(), bin.to_string_lossy().into_owned()),
            (
                "JUPYTER_PATH".to_string(),
                root.path().join("jp").to_string_lossy().into_owned(),
            ),
            ("HOME".to_string(), "/nonexistent".to_string()),
        ]
        .into();
        let specs = discover(&env);
        let py = specs
            .iter()
            .find(|s| s.name == "python3")
            .expect("venv spec found via PATH");
        assert_eq!(py.argv[0], bin.join("python3").to_string_lossy());
        assert_eq!(py.language, "python");
        let r = specs.iter().find(|s| s.name == "ir").expect("JUPYTER_PATH spec");
        assert_eq!(r.language, "r");
        assert_eq!(r.interrupt_mode, InterruptMode::Message);
        assert!(!specs.iter().any(|s| s.name == "broken"));
    }
}
