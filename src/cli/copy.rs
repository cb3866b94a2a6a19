//! `cp`: one file into a sandbox (execd's `POST /files/upload`, a multipart body streamed from
//! the file) or out of one (`GET /files/download`, streamed into a temp file beside the target
//! that is renamed into place), with a progress bar on a terminal and one plain line otherwise.
//! Neither side is ever held in memory whole.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use reqwest::Method;
use tokio::io::AsyncWriteExt;

use super::client::{json, send, Execd};
use super::connect::Connection;
use super::error::CliError;
use super::output::byte_bar;
use crate::wire::files::{FileInfo, FileType};

/// The multipart boundary; a UUID keeps it out of any file's bytes in practice.
const BOUNDARY_PREFIX: &str = "sandboxd-cp-";
/// Bytes read from the local file at a time.
const CHUNK: usize = 256 * 1024;

/// `cp`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A sandbox path is ID:PATH. A local path containing ':' needs a ./ or / in front.\n\nExamples:\n  sandboxd cp ./data.csv 3f2c…:/tmp/data.csv\n  sandboxd cp 3f2c…:/var/log/app.log .\n  sandboxd cp 3f2c…:/etc/os-release -     # to stdout"
)]
pub struct CpArgs {
    /// What to copy: a local file, or ID:PATH in a sandbox.
    #[arg(value_name = "SRC")]
    src: String,
    /// Where to: ID:PATH (a directory, or a path ending in /, gets the file's name), or a local
    /// path (`-`: stdout).
    #[arg(value_name = "DEST")]
    dest: String,
    #[command(flatten)]
    conn: Connection,
}

/// `ID:PATH` → `(ID, PATH)`; local paths (`./a:b`, `/x`, `file`) are `None`.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    let local_looking = id.is_empty() || id.contains('/') || id.starts_with('.');
    (!local_looking).then_some((id, path))
}

/// Copies one file either way.
pub async fn cp(args: CpArgs) -> Result<u8, CliError> {
    match (remote(&args.src), remote(&args.dest)) {
        (None, Some((id, path))) => {
            let execd = args.conn.client()?.execd(id).await?;
            upload(&execd, Path::new(&args.src), path, id).await
        }
        (Some((id, path)), None) => {
            let execd = args.conn.client()?.execd(id).await?;
            download(&execd, path, &args.dest, id).await
        }
        (Some(_), Some(_)) => Err(CliError::Usage(
            "copying between two sandboxes is not supported: copy through a local file".into(),
        )),
        (None, None) => Err(CliError::Usage("one side must be a sandbox path, ID:PATH".into())),
    }
}

async fn upload(execd: &Execd, local: &Path, remote_path: &str, id: &str) -> Result<u8, CliError> {
    let file = tokio::fs::File::open(local)
        .await
        .map_err(|e| CliError::io(format!("cannot open {}", local.display()), e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| CliError::io(format!("cannot stat {}", local.display()), e))?;
    if !meta.is_file() {
        return Err(CliError::Usage(format!(
            "{}: only regular files can be copied",
            local.display()
        )));
    }
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let target =
        if remote_path.is_empty() || remote_path.ends_with('/') || is_remote_dir(execd, remote_path).await? {
            format!("{}/{name}", remote_path.trim_end_matches('/'))
        } else {
            remote_path.to_owned()
        };
    // The mode as execd takes it: octal digits written in decimal.
    let mode: u32 = format!(
        "{:o}",
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
    )
    .parse()
    .unwrap_or(644);
    let boundary = format!("{BOUNDARY_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let metadata = serde_json::json!({ "path": target, "mode": mode }).to_string();
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        name.replace(['"', '\r', '\n'], "_")
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let bar = byte_bar(Some(meta.len()), format!("{} → {id}:{target}", local.display()));
    let body = file_chunks(file, bar.clone());
    let stream = futures_util::stream::iter([Ok(Bytes::from(head))])
        .chain(body)
        .chain(futures_util::stream::iter([Ok(Bytes::from(tail))]));
    let request = execd
        .request(Method::POST, "/files/upload")
        .header(
            reqwest::header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(stream));
    let sent = send(request).await;
    bar.finish_and_clear();
    sent?;
    done(&bar, meta.len(), &format!("{id}:{target}"));
    Ok(0)
}

/// The file's bytes as a stream of chunks, each counted on `progress` as it is read.
fn file_chunks(
    file: tokio::fs::File,
    progress: ProgressBar,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    use futures_util::StreamExt as _;
    tokio_util::io::ReaderStream::with_capacity(file, CHUNK).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            progress.inc(chunk.len() as u64);
        }
    })
}

async fn is_remote_dir(execd: &Execd, path: &str) -> Result<bool, CliError> {
    let response = execd.request(Method::GET, "/files/info").query(&[("path", path)]);
    match send(response).await {
        Ok(response) => {
            let infos: std::collections::BTreeMap<String, FileInfo> = json(response).await?;
            Ok(infos.values().any(|i| i.kind == FileType::Directory))
        }
        Err(CliError::Api { status: 404, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn download(execd: &Execd, remote_path: &str, dest: &str, id: &str) -> Result<u8, CliError> {
    let response = send(
        execd
            .request(Method::GET, "/files/download")
            .query(&[("path", remote_path)]),
    )
    .await?;
    let len = response.content_length();
    let name = Path::new(remote_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let mut chunks = response.bytes_stream();
    if dest == "-" {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|source| CliError::Transport {
                what: format!("the download of {id}:{remote_path} broke off"),
                source,
            })?;
            out.write_all(&chunk)
                .await
                .map_err(|e| CliError::io("writing to stdout", e))?;
        }
        out.flush()
            .await
            .map_err(|e| CliError::io("writing to stdout", e))?;
        return Ok(0);
    }
    let mut target = PathBuf::from(dest);
    if dest.ends_with('/') || tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
        target.push(&name);
    }
    let mut partial = PartialFile::create(&target).await?;
    let bar = byte_bar(len, format!("{id}:{remote_path} → {}", target.display()));
    let file = &mut partial.file;
    let mut total = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|source| CliError::Transport {
            what: format!("the download of {id}:{remote_path} broke off"),
            source,
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|e| CliError::io(format!("writing {}", partial.path.display()), e))?;
        total += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    partial.commit(&target).await?;
    done(&bar, total, &target.display().to_string());
    Ok(0)
}

/// One plain line after the copy when no bar was drawn.
fn done(bar: &ProgressBar, bytes: u64, to: &str) {
    if bar.is_hidden() {
        eprintln!("copied {bytes} bytes to {to}");
    }
}

/// A download's temp file beside its target: renamed into place by `commit`, removed if the
/// copy fails.
struct PartialFile {
    path: PathBuf,
    file: tokio::fs::File,
    committed: bool,
}

impl PartialFile {
    async fn create(target: &Path) -> Result<Self, CliError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = target.with_file_name(format!(".{name}.sandboxd-cp-{}", std::process::id()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| CliError::io(format!("cannot create {}", path.display()), e))?;
        Ok(Self {
            path,
            file,
            committed: false,
        })
    }

    async fn commit(mut self, target: &Path) -> Result<(), CliError> {
        self.file
            .sync_all()
            .await
            .map_err(|e| CliError::io(format!("writing {}", self.path.display()), e))?;
        tokio::fs::rename(&self.path, target)
            .await
            .map_err(|e| CliError::io(format!("cannot move the download to {}", target.display()), e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_are_told_from_local_ones() {
        assert_eq!(remote("abc:/tmp/x"), Some(("abc", "/tmp/x")));
        assert_eq!(remote("abc:"), Some(("abc", "")));
        assert_eq!(remote("./a:b"), None);
        assert_eq!(remote("/a:b"), None);
        assert_eq!(remote("file"), None);
        assert_eq!(remote(":x"), None);
    }
}
