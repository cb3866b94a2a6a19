//! File and directory routes against the real binary: metadata, permissions, upload,
//! download, search, replace, mv, list, archives, identities and bad input.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::util::{Agent, Opts};

/// One part of a hand-built multipart body.
pub enum Part<'a> {
    /// A `metadata` part; `filename` decides whether it carries `filename="metadata"`.
    Metadata { json: String, filename: bool },
    /// A `file` part with its content.
    File { name: &'a str, content: &'a [u8] },
    /// Any other part.
    Other { name: &'a str, content: &'a [u8] },
}

pub const BOUNDARY: &str = "execd-test-boundary-7d3f";

fn part_head(name: &str, filename: Option<&str>, content_type: &str) -> Vec<u8> {
    let disposition = match filename {
        Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
        None => format!("form-data; name=\"{name}\""),
    };
    format!("--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n")
        .into_bytes()
}

pub fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        match p {
            Part::Metadata { json, filename } => {
                body.extend(part_head(
                    "metadata",
                    filename.then_some("metadata"),
                    "application/json",
                ));
                body.extend_from_slice(json.as_bytes());
            }
            Part::File { name, content } => {
                body.extend(part_head("file", Some(name), "application/octet-stream"));
                body.extend_from_slice(content);
            }
            Part::Other { name, content } => {
                body.extend(part_head(name, None, "text/plain"));
                body.extend_from_slice(content);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").into_bytes());
    body
}

pub fn meta(path: &Path, owner: Value, group: Value, mode: u32) -> String {
    json!({"path": path, "owner": owner, "group": group, "mode": mode}).to_string()
}

pub async fn upload(agent: &Agent, prefix: &str, parts: &[Part<'_>]) -> reqwest::Response {
    agent
        .post(&format!("{prefix}/files/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart(parts))
        .send()
        .await
        .unwrap()
}

/// Asserts an error response's status and code and returns its message.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (got, body["code"].as_str().unwrap_or("")),
        (status, code),
        "body: {body}"
    );
    body["message"].as_str().unwrap_or("").to_owned()
}

pub fn q(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(b) {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[tokio::test]
async fn info_expands_paths_and_reports_lstat_fields() {
    let d = open_dir();
    std::fs::write(d.path().join("f.txt"), "hello").unwrap();
    std::os::unix::fs::symlink("f.txt", d.path().join("ln")).unwrap();
    let agent = Agent::start_with(Opts {
        env: vec![("FILES_DIR".into(), d.path().to_string_lossy().into_owned())],
        ..Opts::default()
    });
    let resp = agent
        .get("/files/info?path=$FILES_DIR/f.txt&path=${FILES_DIR}/ln&path=~")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let f = &body["$FILES_DIR/f.txt"];
    assert_eq!(f["path"], json!(d.path().join("f.txt")));
    assert_eq!(
        (f["type"].as_str(), f["size"].as_u64(), f["mode"].as_u64()),
        (Some("file"), Some(5), Some(644))
    );
    assert_eq!(
        (f["owner"].as_str(), f["group"].as_str()),
        (Some("root"), Some("root"))
    );
    assert!(f["modified_at"].as_str().unwrap().ends_with('Z'));
    let ln = &body["${FILES_DIR}/ln"];
    assert_eq!(
        (ln["type"].as_str(), ln["size"].as_u64()),
        (Some("symlink"), Some(5)),
        "lstat, not the target"
    );
    assert_eq!(body["~"]["type"], "directory");

    let empty: Value = agent
        .get("/files/info")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({}));
    let missing = agent
        .get(&format!("/files/info?path={}", q(&d.path().join("nope"))))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "FILE_NOT_FOUND").await;
    let undefined = agent
        .get("/files/info?path=$NOT_SET_ANYWHERE/x")
        .send()
        .await
        .unwrap();
    expect_error(undefined, 400, "INVALID_REQUEST_BODY").await;
}

#[tokio::test]
async fn mode_owner_and_group_round_trip() {
    let d = open_dir();
    let agent = Agent::start();
    let f = d.path().join("owned.txt");
    let resp = upload(
        &agent,
        "",
        &[
            Part::Metadata {
                json: meta(&f, json!("nobody"), json!("nogroup"), 640),
                filename: true,
            },
            Part::File {
                name: "owned.txt",
                content: b"x",
            },
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let info = |agent: &Agent, path: PathBuf| {
        let req = agent.get(&format!("/files/info?path={}", q(&path)));
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v.as_object().unwrap().values().next().unwrap().clone()
        }
    };
    let i = info(&agent, f.clone()).await;
    assert_eq!(
        (i["owner"].as_str(), i["group"].as_str(), i["mode"].as_u64()),
        (Some("nobody"), Some("nogroup"), Some(640))
    );
    let meta = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (65534, 65534, 0o640)
    );

    // chown back to root, then a set-uid mode (chown would clear it if done second).
    let resp = agent
        .post("/files/permissions")
        .json(&json!({ f.to_str().unwrap(): {"owner": "root", "group": "0", "mode": 4755} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let i = info(&agent, f.clone()).await;
    assert_eq!(
        (i["owner"].as_str(), i["group"].as_str(), i["mode"].as_u64()),
        (Some("root"), Some("root"), Some(4755))
    );
    // mode 0 and null owner/group change nothing.
    let resp = agent
        .post("/files/permissions")
        .json(&json!({ f.to_str().unwrap(): {"owner": null, "group": null, "mode": 0} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(info(&agent, f.clone()).await["mode"], 4755);

    let bad = |body: Value| agent.post("/files/permissions").json(&body).send();
    expect_error(
        bad(json!({ f.to_str().unwrap(): {"mode": 798} })).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        bad(json!({ f.to_str().unwrap(): {"owner": "no-such-user-x", "mode": 644} }))
            .await
            .unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        bad(json!({ "/no/such/file": {"mode": 644} })).await.unwrap(),
        404,
        "FILE_NOT_FOUND",
    )
    .await;
    expect_error(
        agent
            .post("/files/permissions")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;

    // mkdir -p with owner and mode on the leaf only.
    let leaf = d.path().join("a/b/c");
    let resp = agent
        .post("/directories")
        .json(&json!({ leaf.to_str().unwrap(): {"owner": "nobody", "group": "nogroup", "mode": 750} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let i = info(&agent, leaf.clone()).await;
    assert_eq!(
        (i["type"].as_str(), i["owner"].as_str(), i["mode"].as_u64()),
        (Some("directory"), Some("nobody"), Some(750))
    );
    assert_eq!(std::fs::metadata(d.path().join("a")).unwrap().uid(), 0);
}

#[tokio::test]
async fn several_files_in_one_upload() {
    let d = open_dir();
    let agent = Agent::start();
    let (a, b, c) = (
        d.path().join("a.txt"),
        d.path().join("new/dir/b.bin"),
        d.path().join("c"),
    );
    std::fs::write(&c, "old").unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o600)).unwrap();
    let resp = upload(
        &agent,
        "",
        &[
            // The SDK's shape: metadata as a file part, null owner and group.
            Part::Metadata {
                json: meta(&a, json!(null), json!(null), 644),
                filename: true,
            },
            Part::File {
                name: "a.txt",
                content: b"alpha",
            },
            // A metadata part without a filename, and an unknown part in between.
            Part::Metadata {
                json: json!({"path": b, "mode": 755}).to_string(),
                filename: false,
            },
            Part::Other {
                name: "comment",
                content: b"ignored",
            },
            Part::File {
                name: "b.bin",
                content: &[0u8, 1, 2, 255],
            },
            // Replacing an existing file keeps its mode when mode is 0.
            Part::Metadata {
                json: meta(&c, json!(null), json!(null), 0),
                filename: true,
            },
            Part::File {
                name: "c",
                content: b"new",
            },
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(std::fs::read(&a).unwrap(), b"alpha");
    assert_eq!(std::fs::read(&b).unwrap(), [0u8, 1, 2, 255]);
    assert_eq!(std::fs::metadata(&b).unwrap().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read(&c).unwrap(), b"new");
    assert_eq!(std::fs::metadata(&c).unwrap().mode() & 0o777, 0o600);
    assert_eq!(names_in(d.path()), ["a.txt", "c", "new"], "no temp files left");
}

#[tokio::test]
async fn bad_uploads_fail_clearly_and_leave_nothing() {
    let d = open_dir();
    let agent = Agent::start();
    let f = d.path().join("sub/f");
    let m = |mode: u32| Part::Metadata {
        json: meta(&f, json!(null), json!(null), mode),
        filename: true,
    };
    let file = Part::File {
        name: "f",
        content: b"data",
    };

    let msg = expect_error(upload(&agent, "", &[m(644)]).await, 400, "INVALID_FILE").await;
    assert!(msg.contains("no file part"), "{msg}");
    expect_error(
        upload(
            &agent,
            "",
            &[
                Part::File {
                    name: "f",
                    content: b"x",
                },
                m(644),
            ],
        )
        .await,
        400,
        "INVALID_FILE_METADATA",
    )
    .await;
    let bad_json = Part::Metadata {
        json: "{\"path\": ".into(),
        filename: true,
    };
    let msg = expect_error(
        upload(
            &agent,
            "",
            &[
                bad_json,
                Part::File {
                    name: "f",
                    content: b"x",
                },
            ],
        )
        .await,
        400,
        "INVALID_FILE_METADATA",
    )
    .await;
    assert!(msg.contains("metadata part 1"), "{msg}");
    expect_error(
        upload(
            &agent,
            "",
            &[
                m(999),
                Part::File {
                    name: "f",
                    content: b"x",
                },
            ],
        )
        .await,
        400,
        "INVALID_FILE_METADATA",
    )
    .await;
    let no_path = Part::Metadata {
        json: "{\"mode\": 644}".into(),
        filename: true,
    };
    expect_error(
        upload(
            &agent,
            "",
            &[
                no_path,
                Part::File {
                    name: "f",
                    content: b"x",
                },
            ],
        )
        .await,
        400,
        "INVALID_FILE_METADATA",
    )
    .await;
    let unknown = Part::Metadata {
        json: meta(&f, json!("no-such-user-x"), json!(null), 644),
        filename: true,
    };
    expect_error(
        upload(&agent, "", &[unknown, file]).await,
        400,
        "INVALID_FILE_METADATA",
    )
    .await;
    let not_multipart = agent.post("/files/upload").body("plain").send().await.unwrap();
    expect_error(not_multipart, 400, "INVALID_FILE").await;
    // A body cut off in the middle of a file part.
    let mut truncated = multipart(&[
        m(644),
        Part::File {
            name: "f",
            content: &[7u8; 100_000],
        },
    ]);
    truncated.truncate(50_000);
    let resp = agent
        .post("/files/upload")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(truncated)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A directory in the way.
    std::fs::create_dir_all(d.path().join("isdir")).unwrap();
    let in_the_way = Part::Metadata {
        json: meta(&d.path().join("isdir"), json!(null), json!(null), 0),
        filename: true,
    };
    let resp = upload(
        &agent,
        "",
        &[
            in_the_way,
            Part::File {
                name: "f",
                content: b"x",
            },
        ],
    )
    .await;
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    assert_eq!(
        names_in(d.path()),
        ["isdir"],
        "no file, temp file or created directory left"
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn full_disk_is_507_and_leaves_nothing() {
    let Some(fs) = Tmpfs::mount("1m") else {
        eprintln!("skipping: cannot mount a tmpfs (not root?)");
        return;
    };
    let agent = Agent::start();
    let target = fs.0.path().join("deep/big.bin");
    let content = vec![0x5au8; 3 << 20];
    let resp = upload(
        &agent,
        "",
        &[
            Part::Metadata {
                json: meta(&target, json!(null), json!(null), 644),
                filename: true,
            },
            Part::File {
                name: "big.bin",
                content: &content,
            },
        ],
    )
    .await;
    let msg = expect_error(resp, 507, "INSUFFICIENT_STORAGE").await;
    assert!(msg.contains("file part 1"), "names the part: {msg}");
    assert!(
        names_in(fs.0.path()).is_empty(),
        "no partial file, temp file or directory: {:?}",
        names_in(fs.0.path())
    );
    // The same through an archive.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "big.bin", &content[..]).unwrap();
    let resp = agent
        .post(&format!("/files/archive?path={}", q(fs.0.path())))
        .body(tar.into_inner().unwrap())
        .send()
        .await
        .unwrap();
    expect_error(resp, 507, "INSUFFICIENT_STORAGE").await;
    assert!(names_in(fs.0.path()).is_empty());
}

/// 1 MiB of pseudo-random bytes; chunk `i` of a big file is this block with `i` in front.
fn block() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..(1 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn chunk(block: &[u8], i: u64) -> Vec<u8> {
    let mut c = block.to_vec();
    c[..8].copy_from_slice(&i.to_le_bytes());
    c
}

#[tokio::test]
async fn one_gib_upload_and_download_round_trip() {
    const CHUNKS: u64 = 1024;
    let d = open_dir();
    let agent = Agent::start();
    let target = d.path().join("big.bin");
    let block = block();
    let mut expected = crc32fast::Hasher::new();
    for i in 0..CHUNKS {
        expected.update(&chunk(&block, i));
    }
    let expected = expected.finalize();

    // Upload: the body is generated as it is sent.
    let head = {
        let mut h = part_head("metadata", Some("metadata"), "application/json");
        h.extend(meta(&target, json!(null), json!(null), 600).into_bytes());
        h.extend_from_slice(b"\r\n");
        h.extend(part_head("file", Some("big.bin"), "application/octet-stream"));
        h
    };
    let tail = format!("\r\n--{BOUNDARY}--\r\n").into_bytes();
    let gen_block = block.clone();
    let stream = futures_util::stream::iter(
        std::iter::once(head)
            .chain((0..CHUNKS).map(move |i| chunk(&gen_block, i)))
            .chain(std::iter::once(tail))
            .map(Ok::<_, std::io::Error>),
    );
    let resp = agent
        .post("/files/upload")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(std::fs::metadata(&target).unwrap().len(), CHUNKS << 20);
    let rss_kib = rss_kib(agent.pid());
    assert!(
        rss_kib < 64 * 1024,
        "execd RSS after a 1 GiB upload is {rss_kib} KiB"
    );

    // Download, streamed and hashed as it arrives.
    let resp = agent
        .get(&format!("/files/download?path={}", q(&target)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(CHUNKS << 20));
    let mut got = crc32fast::Hasher::new();
    let mut len = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        len += piece.len() as u64;
        got.update(&piece);
    }
    assert_eq!(len, CHUNKS << 20);
    assert_eq!(got.finalize(), expected, "content survives the round trip");
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn download_ranges_and_conditional_requests() {
    let d = open_dir();
    let agent = Agent::start();
    let f = d.path().join("digits.txt");
    std::fs::write(&f, "0123456789").unwrap();
    let url = format!("/files/download?path={}", q(&f));
    let get = |range: Option<&str>| {
        let mut r = agent.get(&url);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send()
    };

    let full = get(None).await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        full.headers()["content-disposition"],
        "attachment; filename=\"digits.txt\""
    );
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    let last_modified = full.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(full.text().await.unwrap(), "0123456789");

    for (range, body, content_range) in [
        ("bytes=2-5", "2345", "bytes 2-5/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-3", "789", "bytes 7-9/10"),
        ("bytes=8-100", "89", "bytes 8-9/10"),
        ("bytes=0-0, 4-5", "0", "bytes 0-0/10"),
    ] {
        let r = get(Some(range)).await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.headers()["content-range"], content_range, "{range}");
        assert_eq!(r.headers()["content-length"], body.len().to_string().as_str());
        assert_eq!(r.text().await.unwrap(), body, "{range}");
    }
    for range in ["bytes=10-", "bytes=-0", "bytes=5-2", "bytes=x-y", "lines=1-2"] {
        let r = get(Some(range)).await.unwrap();
        assert_eq!(r.headers()["content-range"], "bytes */10", "{range}");
        expect_error(r, 416, "UNKNOWN").await;
    }

    let cond = |name: &'static str, value: String, range: Option<&'static str>| {
        let mut r = agent.get(&url).header(name, value);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send()
    };
    let r = cond("if-none-match", etag.clone(), None).await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(
        cond("if-none-match", "\"other\"".into(), None)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        cond("if-range", etag.clone(), Some("bytes=0-1"))
            .await
            .unwrap()
            .status(),
        206
    );
    assert_eq!(
        cond("if-range", last_modified.clone(), Some("bytes=0-1"))
            .await
            .unwrap()
            .status(),
        206
    );
    let stale = cond("if-range", "\"stale\"".into(), Some("bytes=0-1"))
        .await
        .unwrap();
    assert_eq!(stale.status(), 200, "a stale If-Range gets the whole file");
    assert_eq!(stale.text().await.unwrap(), "0123456789");
    // Changing the file changes the validator.
    std::fs::write(&f, "0123456789abc").unwrap();
    assert_eq!(
        cond("if-none-match", etag.clone(), None).await.unwrap().status(),
        200
    );

    // Line mode.
    std::fs::write(&f, "l1\nl2\nl3\nl4\n").unwrap();
    let lines = agent
        .get(&format!("{url}&offset=2&limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(lines.status(), 200);
    assert!(lines.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(lines.text().await.unwrap(), "l2\nl3\n");
    assert_eq!(
        agent
            .get(&format!("{url}&offset=3"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "l3\nl4\n"
    );
    expect_error(
        agent.get(&format!("{url}&offset=0")).send().await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    let both = agent
        .get(&format!("{url}&offset=1"))
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    expect_error(both, 400, "INVALID_REQUEST_BODY").await;

    // Names that need RFC 5987.
    let odd = d.path().join("naïve \"q\".txt");
    std::fs::write(&odd, "x").unwrap();
    let r = agent
        .get(&format!("/files/download?path={}", q(&odd)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"na%C3%AFve%20%22q%22.txt\"; filename*=UTF-8''na%C3%AFve%20%22q%22.txt"
    );

    expect_error(
        agent.get("/files/download").send().await.unwrap(),
        400,
        "MISSING_QUERY",
    )
    .await;
    let missing = agent
        .get(&format!("/files/download?path={}", q(&d.path().join("nope"))))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "FILE_NOT_FOUND").await;
    let dir = agent
        .get(&format!("/files/download?path={}", q(d.path())))
        .send()
        .await
        .unwrap();
    assert!(!dir.status().is_success());
}

fn tree(root: &Path) {
    for f in [
        "a.py",
        "b.txt",
        "x",
        "src/main.py",
        "src/x",
        "src/deep/x",
        "src/deep/y.md",
        "docs/a.md",
    ] {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, f).unwrap();
    }
}

fn rel(root: &Path, infos: &Value) -> Vec<String> {
    infos
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            Path::new(i["path"].as_str().unwrap())
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[tokio::test]
async fn search_matches_base_names() {
    let d = open_dir();
    tree(d.path());
    let agent = Agent::start();
    let search = |pattern: &str| {
        let url = format!(
            "/files/search?path={}&pattern={}",
            q(d.path()),
            pattern
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace(',', "%2C")
        );
        agent.get(&url).send()
    };
    let mut out = Vec::new();
    for pattern in ["*.py", "**/x", "{a.md,y.md}", "**", "nothing-*"] {
        let r = search(pattern).await.unwrap();
        assert_eq!(r.status(), 200, "{pattern}");
        out.push(rel(d.path(), &r.json().await.unwrap()));
    }
    assert_eq!(out[0], ["a.py", "src/main.py"]);
    assert_eq!(out[1], ["src/deep/x", "src/x", "x"]);
    assert_eq!(out[2], ["docs/a.md", "src/deep/y.md"]);
    assert_eq!(out[3].len(), 8, "every file, no directories: {:?}", out[3]);
    assert!(out[4].is_empty());
    let default: Value = agent
        .get(&format!("/files/search?path={}", q(d.path())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(default.as_array().unwrap().len(), 8);
    expect_error(search("[").await.unwrap(), 400, "INVALID_REQUEST_BODY").await;
    expect_error(
        agent.get("/files/search").send().await.unwrap(),
        400,
        "MISSING_QUERY",
    )
    .await;
    let missing = agent
        .get(&format!("/files/search?path={}", q(&d.path().join("nope"))))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "FILE_NOT_FOUND").await;
}

#[tokio::test]
async fn replace_counts_and_keeps_mode() {
    let d = open_dir();
    let agent = Agent::start();
    let (a, b) = (d.path().join("a.cfg"), d.path().join("b.cfg"));
    std::fs::write(&a, "host=localhost\nurl=localhost:80\n").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(&b, "nothing here").unwrap();
    let body = json!({
        a.to_str().unwrap(): {"old": "localhost", "new": "0.0.0.0"},
        b.to_str().unwrap(): {"old": "localhost", "new": "x"},
    });
    let r = agent
        .post("/files/replace?verbose=true")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let counts: Value = r.json().await.unwrap();
    assert_eq!(counts[a.to_str().unwrap()]["replacedCount"], 2);
    assert_eq!(counts[b.to_str().unwrap()]["replacedCount"], 0);
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "host=0.0.0.0\nurl=0.0.0.0:80\n"
    );
    assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o640);
    let body = json!({ a.to_str().unwrap(): {"old": "0.0.0.0", "new": "::"} });
    let r = agent.post("/files/replace").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "", "no body without verbose");
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "host=::\nurl=:::80\n");
    let empty_old = json!({ a.to_str().unwrap(): {"old": "", "new": "x"} });
    expect_error(
        agent
            .post("/files/replace")
            .json(&empty_old)
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    let missing = json!({ "/no/such/file": {"old": "a", "new": "b"} });
    expect_error(
        agent.post("/files/replace").json(&missing).send().await.unwrap(),
        404,
        "FILE_NOT_FOUND",
    )
    .await;
    assert_eq!(names_in(d.path()), ["a.cfg", "b.cfg"]);
}

#[tokio::test]
async fn mv_across_directories() {
    let d = open_dir();
    let agent = Agent::start();
    std::fs::create_dir_all(d.path().join("from")).unwrap();
    std::fs::write(d.path().join("from/f"), "1").unwrap();
    std::fs::write(d.path().join("from/g"), "2").unwrap();
    let mv = |items: Value| agent.post("/files/mv").json(&items).send();
    let items = json!([
        {"src": d.path().join("from/f"), "dest": d.path().join("to/deep/f2")},
        {"src": d.path().join("from/g"), "dest": d.path().join("g")},
    ]);
    assert_eq!(mv(items).await.unwrap().status(), 200);
    assert_eq!(std::fs::read_to_string(d.path().join("to/deep/f2")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(d.path().join("g")).unwrap(), "2");
    assert!(names_in(&d.path().join("from")).is_empty());
    std::fs::write(d.path().join("h"), "3").unwrap();
    let onto_existing = json!([{"src": d.path().join("h"), "dest": d.path().join("g")}]);
    expect_error(mv(onto_existing).await.unwrap(), 500, "RUNTIME_ERROR").await;
    assert_eq!(
        std::fs::read_to_string(d.path().join("g")).unwrap(),
        "2",
        "dest untouched"
    );
    let missing = json!([{"src": d.path().join("nope"), "dest": d.path().join("z")}]);
    expect_error(mv(missing).await.unwrap(), 404, "FILE_NOT_FOUND").await;
}

#[tokio::test]
async fn list_depth_and_removal() {
    let d = open_dir();
    tree(d.path());
    std::os::unix::fs::symlink(d.path().join("src"), d.path().join("link")).unwrap();
    let agent = Agent::start();
    let list = |path: &Path, depth: Option<&str>| {
        let mut url = format!("/directories/list?path={}", q(path));
        if let Some(depth) = depth {
            url.push_str(&format!("&depth={depth}"));
        }
        agent.get(&url).send()
    };
    let one: Value = list(d.path(), None).await.unwrap().json().await.unwrap();
    assert_eq!(rel(d.path(), &one), ["a.py", "b.txt", "docs", "link", "src", "x"]);
    assert_eq!(one[3]["type"], "symlink");
    let two: Value = list(d.path(), Some("2")).await.unwrap().json().await.unwrap();
    assert_eq!(
        rel(d.path(), &two),
        [
            "a.py",
            "b.txt",
            "docs",
            "docs/a.md",
            "link",
            "src",
            "src/deep",
            "src/main.py",
            "src/x",
            "x"
        ],
        "depth-first, lexical, never into the symlink"
    );
    let all: Value = list(d.path(), Some("9")).await.unwrap().json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 12);
    let zero: Value = list(d.path(), Some("0")).await.unwrap().json().await.unwrap();
    assert_eq!(zero, json!([]));
    expect_error(
        list(d.path(), Some("-1")).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        list(d.path(), Some("two")).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        list(&d.path().join("link"), None).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        list(&d.path().join("x"), None).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        list(&d.path().join("nope"), None).await.unwrap(),
        404,
        "FILE_NOT_FOUND",
    )
    .await;
    expect_error(
        agent.get("/directories/list").send().await.unwrap(),
        400,
        "MISSING_QUERY",
    )
    .await;

    // DELETE /files: files and links only; missing paths are fine.
    let del = agent
        .delete(&format!(
            "/files?path={}&path={}&path={}",
            q(&d.path().join("x")),
            q(&d.path().join("link")),
            q(&d.path().join("nope"))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert!(
        !d.path().join("x").exists() && d.path().join("src/x").exists(),
        "the link went, not its target"
    );
    expect_error(
        agent
            .delete(&format!("/files?path={}", q(&d.path().join("src"))))
            .send()
            .await
            .unwrap(),
        500,
        "RUNTIME_ERROR",
    )
    .await;
    // DELETE /directories: rm -rf.
    let del = agent
        .delete(&format!(
            "/directories?path={}&path={}",
            q(&d.path().join("src")),
            q(&d.path().join("nope"))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(names_in(d.path()), ["a.py", "b.txt", "docs"]);
    expect_error(
        agent.delete("/directories?path=/").send().await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
}

#[tokio::test]
async fn archive_round_trip() {
    let src = open_dir();
    tree(src.path());
    std::os::unix::fs::symlink("src/main.py", src.path().join("main-link")).unwrap();
    std::fs::set_permissions(src.path().join("a.py"), std::fs::Permissions::from_mode(0o751)).unwrap();
    let agent = Agent::start();
    for gzip in [false, true] {
        let r = agent
            .get(&format!("/files/archive?path={}&gzip={gzip}", q(src.path())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(
            ct,
            if gzip {
                "application/gzip"
            } else {
                "application/x-tar"
            }
        );
        let tar = r.bytes().await.unwrap();
        let dst = open_dir();
        let target = dst.path().join("restored");
        let r = agent
            .post(&format!("/files/archive?path={}", q(&target)))
            .body(tar)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let counts: Value = r.json().await.unwrap();
        assert_eq!(
            (
                counts["files"].as_u64(),
                counts["directories"].as_u64(),
                counts["links"].as_u64()
            ),
            (Some(8), Some(3), Some(1)),
            "{counts}"
        );
        for f in [
            "a.py",
            "b.txt",
            "x",
            "src/main.py",
            "src/x",
            "src/deep/x",
            "src/deep/y.md",
            "docs/a.md",
        ] {
            assert_eq!(std::fs::read_to_string(target.join(f)).unwrap(), f);
        }
        assert_eq!(
            std::fs::read_link(target.join("main-link")).unwrap(),
            Path::new("src/main.py")
        );
        assert_eq!(
            std::fs::metadata(target.join("a.py")).unwrap().mode() & 0o777,
            0o751
        );
        let leftovers: Vec<_> = walk(&target)
            .into_iter()
            .filter(|p| p.contains(".execd-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    expect_error(
        agent
            .get("/files/archive?path=/no/such/dir")
            .send()
            .await
            .unwrap(),
        404,
        "FILE_NOT_FOUND",
    )
    .await;
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// A tar whose entries are written by hand, so that their names can be anything.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test]
async fn archive_refuses_entries_that_escape() {
    let outer = open_dir();
    let target = outer.path().join("t");
    let agent = Agent::start();
    let post = |body: Vec<u8>| {
        agent
            .post(&format!("/files/archive?path={}", q(&target)))
            .body(body)
            .send()
    };
    let regular = tar::EntryType::Regular;
    for (entries, what, says) in [
        (vec![("../evil", regular, &b"x"[..], None)], "dot-dot", "escapes"),
        (
            vec![("ok/../../evil", regular, &b"x"[..], None)],
            "nested dot-dot",
            "escapes",
        ),
        (
            vec![("/tmp/evil-abs", regular, &b"x"[..], None)],
            "absolute",
            "escapes",
        ),
        (
            vec![
                ("esc", tar::EntryType::Symlink, &b""[..], Some("..")),
                ("esc/evil", regular, &b"x"[..], None),
            ],
            "through a symlink",
            "below the symlink",
        ),
        (
            vec![("hard", tar::EntryType::Link, &b""[..], Some("../outside"))],
            "hard link out",
            "escapes",
        ),
    ] {
        let msg = expect_error(
            post(raw_tar(&entries)).await.unwrap(),
            400,
            "INVALID_REQUEST_BODY",
        )
        .await;
        assert!(msg.contains(says), "{what}: {msg}");
        assert!(!outer.path().join("evil").exists(), "{what}");
        let leftovers: Vec<_> = walk(outer.path())
            .into_iter()
            .filter(|p| p.contains(".execd-"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    }
    assert!(!Path::new("/tmp/evil-abs").exists());
    let garbage = post(b"this is not a tar archive at all, not even close....".repeat(20))
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
}

/// One hand-written tar entry with the header fields the symlink tests vary.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    data: &'a [u8],
    link: Option<&'a str>,
    mode: u32,
    mtime: u64,
    uid: u64,
}

impl<'a> Raw<'a> {
    fn new(name: &'a str, kind: tar::EntryType) -> Self {
        Raw {
            name,
            kind,
            data: b"",
            link: None,
            mode: 0o644,
            mtime: 0,
            uid: 0,
        }
    }
    fn dir(name: &'a str, mode: u32) -> Self {
        Raw {
            mode,
            ..Raw::new(name, tar::EntryType::Directory)
        }
    }
    fn file(name: &'a str, data: &'a [u8]) -> Self {
        Raw {
            data,
            ..Raw::new(name, tar::EntryType::Regular)
        }
    }
    fn symlink(name: &'a str, to: &'a str) -> Self {
        Raw {
            link: Some(to),
            ..Raw::new(name, tar::EntryType::Symlink)
        }
    }
    fn hard(name: &'a str, to: &'a str) -> Self {
        Raw {
            link: Some(to),
            ..Raw::new(name, tar::EntryType::Link)
        }
    }
}

fn raw_tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        if let Some(link) = e.link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_mtime(e.mtime);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A directory beside the extraction target standing for "/etc": what the archive must not
/// touch. Holds `file` ("precious", 0644) and is itself 0755.
struct Outside {
    _tmp: tempfile::TempDir,
    target: PathBuf,
    dir: PathBuf,
    file: PathBuf,
}

impl Outside {
    fn new() -> Self {
        let tmp = open_dir();
        let target = tmp.path().join("target");
        let dir = tmp.path().join("outside");
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "precious").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Outside {
            _tmp: tmp,
            target,
            dir,
            file,
        }
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn file_str(&self) -> &str {
        self.file.to_str().unwrap()
    }

    /// Asserts that nothing outside the target changed: the directory's mode, entries, and
    /// the file's content, mode, owner, mtime and link count.
    fn assert_untouched(&self, what: &str, file_mtime: i64) {
        let d = std::fs::metadata(&self.dir).unwrap();
        assert_eq!(d.mode() & 0o7777, 0o755, "{what}: outside dir mode");
        assert_eq!(names_in(&self.dir), ["file"], "{what}: outside dir entries");
        let f = std::fs::symlink_metadata(&self.file).unwrap();
        assert!(f.is_file(), "{what}");
        assert_eq!(f.mode() & 0o7777, 0o644, "{what}: outside file mode");
        assert_eq!(f.nlink(), 1, "{what}: outside file link count");
        assert_eq!(f.uid(), 0, "{what}: outside file owner");
        assert_eq!(f.mtime(), file_mtime, "{what}: outside file mtime");
        assert_eq!(std::fs::read_to_string(&self.file).unwrap(), "precious", "{what}");
        let leftovers: Vec<_> = walk(self.target.parent().unwrap())
            .into_iter()
            .filter(|p| p.contains(".execd-"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    }
}

async fn post_tar(agent: &Agent, dir: &Path, entries: &[Raw<'_>]) -> reqwest::Response {
    agent
        .post(&format!("/files/archive?path={}", q(dir)))
        .body(raw_tar_of(entries))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn issue19_archive_directory_entry_replaces_a_symlink_never_its_target() {
    let agent = Agent::start();
    // The reported case: a symlink to a directory outside, then a directory entry of the same
    // name with mode 777. The mode must land on a real directory in the target.
    let o = Outside::new();
    let mtime = std::fs::metadata(&o.file).unwrap().mtime();
    let resp = post_tar(
        &agent,
        &o.target,
        &[Raw::symlink("d", o.dir_str()), Raw::dir("d", 0o777)],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let counts: Value = resp.json().await.unwrap();
    assert_eq!(
        (counts["links"].as_u64(), counts["directories"].as_u64()),
        (Some(1), Some(1)),
        "{counts}"
    );
    o.assert_untouched("symlink then directory", mtime);
    let d = std::fs::symlink_metadata(o.target.join("d")).unwrap();
    assert!(d.is_dir(), "the link itself was replaced by a directory");
    assert_eq!(d.mode() & 0o7777, 0o777);

    // The same with a symlink that was already in the target (not from the archive), and a
    // directory below it that the archive fills.
    let o = Outside::new();
    std::os::unix::fs::symlink(&o.dir, o.target.join("pre")).unwrap();
    let resp = post_tar(
        &agent,
        &o.target,
        &[
            Raw::dir("pre", 0o700),
            Raw::dir("pre/sub", 0o750),
            Raw::file("pre/sub/x", b"inside"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    o.assert_untouched("pre-existing symlink then directory", mtime);
    let pre = std::fs::symlink_metadata(o.target.join("pre")).unwrap();
    assert!(pre.is_dir());
    assert_eq!(pre.mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::metadata(o.target.join("pre/sub")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_to_string(o.target.join("pre/sub/x")).unwrap(),
        "inside"
    );
}

#[tokio::test]
async fn issue19_archive_file_entry_replaces_a_symlink_never_writes_its_target() {
    let agent = Agent::start();
    let o = Outside::new();
    let mtime = std::fs::metadata(&o.file).unwrap().mtime();
    std::os::unix::fs::symlink(&o.file, o.target.join("pre")).unwrap();
    // Mode, mtime and owner all differ from the outside file's, so any of them applied
    // through the link would show.
    let with_meta = |name| Raw {
        mode: 0o600,
        mtime: 1_000_000,
        uid: 4242,
        ..Raw::file(name, b"new")
    };
    let resp = post_tar(
        &agent,
        &o.target,
        &[Raw::symlink("f", o.file_str()), with_meta("f"), with_meta("pre")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    o.assert_untouched("symlink then file", mtime);
    for name in ["f", "pre"] {
        let m = std::fs::symlink_metadata(o.target.join(name)).unwrap();
        assert!(m.is_file(), "{name} is a regular file now, not a link");
        assert_eq!(m.mode() & 0o7777, 0o600, "{name}");
        assert_eq!(m.mtime(), 1_000_000, "{name}");
        assert_eq!(m.uid(), 0, "{name}: archive owners are not applied");
        assert_eq!(std::fs::read(o.target.join(name)).unwrap(), b"new");
    }
}

#[tokio::test]
async fn issue19_archive_refuses_entries_through_a_symlink() {
    let agent = Agent::start();
    let o = Outside::new();
    let mtime = std::fs::metadata(&o.file).unwrap().mtime();
    std::os::unix::fs::symlink(&o.dir, o.target.join("pre")).unwrap();
    for (entries, entry, what) in [
        (
            vec![Raw::symlink("d", o.dir_str()), Raw::file("d/x", b"evil")],
            "d/x",
            "archive symlink then a file below it",
        ),
        (
            vec![Raw::symlink("e", o.dir_str()), Raw::dir("e/sub", 0o777)],
            "e/sub",
            "archive symlink then a directory below it",
        ),
        (
            vec![Raw::symlink("g", o.dir_str()), Raw::file("g/new/deep", b"evil")],
            "g/new/deep",
            "archive symlink then a nested path whose parents are missing",
        ),
        (vec![Raw::file("pre/x", b"evil")], "pre/x", "pre-existing symlink"),
        (
            vec![Raw::symlink("s", o.dir_str()), Raw::hard("h", "s/file")],
            "h",
            "hard link through a symlink",
        ),
        (
            vec![Raw::hard("h2", "pre/file")],
            "h2",
            "hard link through a pre-existing symlink",
        ),
    ] {
        let msg = expect_error(
            post_tar(&agent, &o.target, &entries).await,
            400,
            "INVALID_REQUEST_BODY",
        )
        .await;
        assert!(
            msg.contains(&format!("{entry:?}")),
            "{what}: names the entry: {msg}"
        );
        assert!(msg.contains("symlink"), "{what}: says why: {msg}");
        o.assert_untouched(what, mtime);
    }
    assert!(std::fs::symlink_metadata(o.target.join("pre"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[tokio::test]
async fn issue19_archive_hard_links_never_reach_outside() {
    let agent = Agent::start();
    let o = Outside::new();
    let mtime = std::fs::metadata(&o.file).unwrap().mtime();
    let msg = expect_error(
        post_tar(&agent, &o.target, &[Raw::hard("h", "../outside/file")]).await,
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    assert!(msg.contains("escapes"), "{msg}");
    o.assert_untouched("hard link out with ..", mtime);

    // A hard link to a symlink that points outside is a second symlink, not a second name of
    // the outside file; writing a file of that name afterwards replaces the link.
    std::os::unix::fs::symlink(&o.file, o.target.join("pre")).unwrap();
    let resp = post_tar(
        &agent,
        &o.target,
        &[
            Raw::symlink("s", o.file_str()),
            Raw::hard("h", "s"),
            Raw::hard("h-pre", "pre"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    o.assert_untouched("hard link to a symlink", mtime);
    for name in ["h", "h-pre"] {
        assert_eq!(std::fs::read_link(o.target.join(name)).unwrap(), o.file, "{name}");
    }
    let resp = post_tar(
        &agent,
        &o.target,
        &[Raw::file("h", b"new"), Raw::dir("h-pre", 0o777)],
    )
    .await;
    assert_eq!(resp.status(), 200);
    o.assert_untouched("entries over hard-linked symlinks", mtime);
    assert_eq!(std::fs::read(o.target.join("h")).unwrap(), b"new");
    assert!(std::fs::symlink_metadata(o.target.join("h-pre"))
        .unwrap()
        .is_dir());
}

#[tokio::test]
async fn identity_routes_act_as_that_user() {
    let d = open_dir();
    let open = d.path().join("open");
    let closed = d.path().join("closed");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(&closed).unwrap();
    std::fs::write(closed.join("secret"), "s").unwrap();
    std::fs::set_permissions(closed.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::start();
    let nobody = "/v1/filesystem/65534/65534";

    let f = open.join("mine.txt");
    let resp = upload(
        &agent,
        nobody,
        &[
            Part::Metadata {
                json: meta(&f, json!(null), json!(null), 0),
                filename: true,
            },
            Part::File {
                name: "mine.txt",
                content: b"hi",
            },
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (65534, 65534),
        "created files belong to the identity"
    );
    let info: Value = agent
        .get(&format!("{nobody}/files/info?path={}", q(&f)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info[f.to_str().unwrap()]["owner"], "nobody");

    let denied = upload(
        &agent,
        nobody,
        &[
            Part::Metadata {
                json: meta(&closed.join("x"), json!(null), json!(null), 0),
                filename: true,
            },
            Part::File {
                name: "x",
                content: b"no",
            },
        ],
    )
    .await;
    expect_error(denied, 403, "PERMISSION_DENIED").await;
    let r = agent
        .get(&format!(
            "{nobody}/files/download?path={}",
            q(&closed.join("secret"))
        ))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    let r = agent
        .delete(&format!("{nobody}/directories?path={}", q(&closed)))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    let r = agent
        .post(&format!("{nobody}/files/permissions"))
        .json(&json!({ closed.join("secret").to_str().unwrap(): {"mode": 777} }))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(names_in(&closed), ["secret"]);
    // The classic routes are still root.
    let r = agent
        .get(&format!("/files/download?path={}", q(&closed.join("secret"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "s");
    // uid 0 with another gid is allowed; ids out of range are not.
    let r = agent
        .get(&format!("/v1/filesystem/0/100/files/info?path={}", q(&f)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = agent
        .get(&format!("/v1/filesystem/4294967295/0/files/info?path={}", q(&f)))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_REQUEST_BODY").await;
}

#[tokio::test]
async fn names_that_are_not_utf8() {
    let d = open_dir();
    use std::os::unix::ffi::OsStrExt;
    let odd = d.path().join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"));
    std::fs::write(&odd, "x").unwrap();
    let agent = Agent::start();
    let r = agent
        .get(&format!("/files/info?path={}", q(&odd)))
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 400, "INVALID_REQUEST_BODY").await;
    assert!(msg.contains("UTF-8"), "{msg}");
    // Listing such a directory still works (the name is shown with a replacement character).
    let r = agent
        .get(&format!("/directories/list?path={}", q(d.path())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v[0]["path"].as_str().unwrap().contains('\u{fffd}'));
    // And archives carry the exact bytes.
    let tar = agent
        .get(&format!("/files/archive?path={}", q(d.path())))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dst = open_dir();
    let r = agent
        .post(&format!("/files/archive?path={}", q(dst.path())))
        .body(tar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dst
        .path()
        .join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"))
        .exists());
}
