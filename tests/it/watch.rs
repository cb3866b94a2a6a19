//! `GET /files/watch` against the real binary: event kinds, coalescing, resume with
//! `Last-Event-ID`, and explicit overflow.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::files::q;
use crate::util::Agent;

/// Reads SSE events off a live response, one at a time.
struct Reader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

#[derive(Debug, Clone)]
struct Ev {
    id: Option<u64>,
    data: Value,
}

impl Ev {
    fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }
    fn path(&self) -> &str {
        self.data["path"].as_str().unwrap_or("")
    }
}

impl Reader {
    async fn open(agent: &Agent, dir: &Path, last_id: Option<u64>) -> Self {
        let mut req = agent.get(&format!("/files/watch?path={}&recursive=true", q(dir)));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut r = Reader {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        };
        // The opening comment says the watch is live.
        let first = r.frame(Duration::from_secs(5)).await.expect("opening comment");
        assert!(first.starts_with(':'), "{first}");
        r
    }

    /// The next frame (event or comment), or None after `timeout`.
    async fn frame(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let frame = self.buf[..i].to_owned();
                self.buf.drain(..i + 2);
                return Some(frame);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next event, skipping comments.
    async fn event(&mut self, timeout: Duration) -> Option<Ev> {
        loop {
            let frame = self.frame(timeout).await?;
            let mut id = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            if let Some(data) = data {
                return Some(Ev { id, data });
            }
        }
    }

    /// Events until `n` have arrived or the stream has been quiet for a while.
    async fn events(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.event(Duration::from_secs(5)).await {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }
}

fn summary(events: &[Ev], root: &Path) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let rel = |p: &str| {
                Path::new(p)
                    .strip_prefix(root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| p.to_owned())
            };
            match e.data["old_path"].as_str() {
                Some(old) => format!("{} {} <- {}", e.kind(), rel(e.path()), rel(old)),
                None => format!("{} {}", e.kind(), rel(e.path())),
            }
        })
        .collect()
}

impl Reader {
    /// The next event, which must come (each change of these tests is waited for before the
    /// next is made, so that separate changes are never coalesced into one event).
    async fn next(&mut self) -> Ev {
        self.event(Duration::from_secs(5)).await.expect("an event")
    }
}

#[tokio::test]
async fn watch_reports_create_modify_rename_delete_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_owned();
    let agent = Agent::start();
    let mut r = Reader::open(&agent, &root, None).await;

    let mut events = Vec::new();
    std::fs::write(root.join("a.txt"), "one").unwrap();
    events.push(r.next().await);
    std::fs::write(root.join("a.txt"), "two").unwrap();
    events.push(r.next().await);
    std::fs::rename(root.join("a.txt"), root.join("b.txt")).unwrap();
    events.push(r.next().await);
    std::fs::create_dir(root.join("sub")).unwrap();
    events.push(r.next().await);
    std::fs::write(root.join("sub/inner"), "x").unwrap();
    events.push(r.next().await);
    std::fs::remove_file(root.join("b.txt")).unwrap();
    events.push(r.next().await);
    assert_eq!(
        summary(&events, &root),
        [
            "created a.txt",
            "modified a.txt",
            "renamed b.txt <- a.txt",
            "created sub",
            "created sub/inner",
            "deleted b.txt"
        ]
    );
    assert_eq!(events[3].data["is_dir"], true);
    assert!(events.iter().all(|e| e.data["timestamp"].is_i64()));
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.id.expect("every event has an id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ids: {ids:?}"
    );

    // Disconnect, change things, and resume: exactly the missed events, once. Another
    // subscriber tells when each change has been recorded.
    drop(r);
    let mut probe = Reader::open(&agent, &root, None).await;
    let last = ids[3];
    std::fs::write(root.join("c.txt"), "c").unwrap();
    probe.next().await;
    std::fs::remove_file(root.join("sub/inner")).unwrap();
    probe.next().await;
    let mut resumed = Reader::open(&agent, &root, Some(last)).await;
    let events = resumed.events(4).await;
    assert_eq!(
        summary(&events, &root),
        [
            "created sub/inner",
            "deleted b.txt",
            "created c.txt",
            "deleted sub/inner"
        ]
    );
    assert_eq!(events[0].id, Some(last + 1));
    // Nothing doubled: the next event after them is a new change.
    std::fs::write(root.join("end"), "e").unwrap();
    let next = resumed.next().await;
    assert_eq!(summary(&[next], &root), ["created end"], "nothing doubled");

    // A resume from before the kept history is reported, not silently skipped.
    let mut stale = Reader::open(&agent, &root, Some(1)).await;
    let first = stale.event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.kind(), "overflow");
    assert_eq!(first.id, None);
    let rest = stale.events(6).await;
    assert_eq!(rest.len(), 6, "then everything that is kept");
}

#[tokio::test]
async fn watch_coalesces_bursts() {
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start();
    let mut r = Reader::open(&agent, d.path(), None).await;
    // Many writes to one file within the window become one event.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(d.path().join("burst")).unwrap();
        for _ in 0..200 {
            f.write_all(b"0123456789").unwrap();
        }
    }
    // Created and deleted within the window: nothing at all.
    std::fs::write(d.path().join("ephemeral"), "x").unwrap();
    std::fs::remove_file(d.path().join("ephemeral")).unwrap();
    let events = r.events(3).await;
    assert_eq!(summary(&events, d.path()), ["created burst"]);
}

#[tokio::test]
async fn watch_of_a_missing_path_is_404() {
    let agent = Agent::start();
    let r = agent.get("/files/watch?path=/no/such/dir").send().await.unwrap();
    crate::files::expect_error(r, 404, "FILE_NOT_FOUND").await;
    let r = agent
        .get("/files/watch?path=/tmp")
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    crate::files::expect_error(r, 400, "INVALID_REQUEST_BODY").await;
}
