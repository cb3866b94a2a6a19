//! Replay: a client that drops mid-stream loses nothing and sees nothing twice, and a
//! disconnect never stops the execution.

use std::time::Duration;

use serde_json::json;

use crate::util::{collect_sse, eventually, parse_sse, Agent};

#[tokio::test]
async fn reconnect_with_last_event_id_loses_and_doubles_nothing() {
    let agent = Agent::start();
    let mut resp = agent
        .post("/command")
        .json(&json!({"command": "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.05; done"}))
        .send()
        .await
        .unwrap();
    // Read until event 3 is complete, then drop the connection mid-stream.
    let mut buf = String::new();
    let seen = loop {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        let complete = &buf[..buf.rfind("\n\n").map_or(0, |i| i + 2)];
        let events = parse_sse(complete);
        if events.len() >= 3 {
            break events;
        }
    };
    drop(resp);
    let id = seen[0].text().to_owned();
    let last = seen.last().unwrap().id.unwrap();

    // Resume while the command is still running: the rest arrives live.
    let resumed = agent
        .get(&format!("/command/{id}/events"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = collect_sse(resumed).await;
    let all: Vec<_> = seen.iter().chain(&rest).collect();
    let ids: Vec<u64> = all.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "contiguous, no gaps, no duplicates"
    );
    let lines: Vec<&str> = all
        .iter()
        .filter(|e| e.kind() == "stdout")
        .map(|e| e.text())
        .collect();
    assert_eq!(lines, (1..=8).map(|i| format!("line{i}")).collect::<Vec<_>>());
    assert_eq!(all.last().unwrap().kind(), "execution_complete");

    // After the end, the whole journal replays from the start, or after any id via ?after=.
    let full = collect_sse(agent.get(&format!("/command/{id}/events")).send().await.unwrap()).await;
    assert_eq!(full.len(), ids.len());
    let tail = collect_sse(
        agent
            .get(&format!("/command/{id}/events?after=7"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tail.first().unwrap().id, Some(8));
    let none = collect_sse(
        agent
            .get(&format!("/command/{id}/events?after=999"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn disconnect_does_not_stop_the_command() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done");
    let mut resp = agent
        .post("/command")
        .json(&json!({"command": format!("sleep 0.3; echo finished > {}", marker.display())}))
        .send()
        .await
        .unwrap();
    let _init = resp.chunk().await.unwrap();
    drop(resp);
    eventually(5, "the command to finish after the client left", async || {
        marker.exists().then_some(())
    })
    .await;
}

#[tokio::test]
async fn large_output_replays_from_spilled_journal() {
    let agent = Agent::start();
    // ~6 MB of events: far more than a journal keeps in memory.
    let events = agent
        .run(json!({"command": "seq 1 300000 | sed 's/$/ padding-padding-padding/'"}))
        .await;
    let id = events[0].text().to_owned();
    let replay = tokio::time::timeout(
        Duration::from_secs(30),
        collect_sse(
            agent
                .get(&format!("/command/{id}/events?after=1"))
                .send()
                .await
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(replay.len(), events.len() - 1);
    assert_eq!(replay[0].text(), "1 padding-padding-padding");
    assert_eq!(replay.last().unwrap().kind(), "execution_complete");

    // Resume points inside batches that have spilled (event N + 1 is line N): exactly the rest.
    for after in [1000usize, 123_457] {
        let resp = agent
            .get(&format!("/command/{id}/events"))
            .header("Last-Event-ID", after.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let rest = tokio::time::timeout(Duration::from_secs(30), collect_sse(resp))
            .await
            .unwrap();
        assert_eq!(rest[0].id, Some(after as u64 + 1));
        assert_eq!(rest[0].text(), format!("{after} padding-padding-padding"));
        assert_eq!(rest.len(), events.len() - after);
    }
}

#[tokio::test]
async fn issue11_malformed_last_event_id_is_a_400_after_the_command_lookup() {
    let agent = Agent::start();
    let events = agent.run(json!({"command": "echo hi"})).await;
    let id = events[0].text().to_owned();
    let resp = agent
        .get(&format!("/command/{id}/events"))
        .header("Last-Event-ID", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_REQUEST_BODY");
    assert_eq!(body["message"], "Last-Event-ID must be an event id");
    // An unknown command is a 404 whatever the header says.
    let resp = agent
        .get("/command/0123456789abcdef0123456789abcdef/events")
        .header("Last-Event-ID", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// A large stream's bytes are the same live and replayed from the journal's spill file (packed
/// records unpacked), from the start and after ids on both sides of where it spilled.
#[tokio::test]
async fn large_stream_replays_byte_for_byte() {
    let agent = Agent::start();
    // About 10 MB of SSE, with what the spill packs differently: quotes, backslashes, tabs,
    // invalid UTF-8, blank lines, and both streams.
    let script = r#"seq 1 50000 | awk '{ printf "line %d \"q\" \\ \t \377 end\n\n", $1; printf "err %d\n", $1 > "/dev/stderr" }'"#;
    let body = |resp: reqwest::Response| async move { resp.bytes().await.unwrap() };
    let live = body(
        agent
            .post("/command")
            .json(&json!({ "command": script }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let text = std::str::from_utf8(&live).expect("SSE is UTF-8");
    let events = parse_sse(text);
    let kinds = |k: &str| events.iter().filter(|e| e.kind() == k).count();
    assert_eq!((kinds("stdout"), kinds("stderr")), (100_000, 50_000));
    assert_eq!(events.last().unwrap().kind(), "execution_complete");
    let id = events[0].text().to_owned();
    let last = events.last().unwrap().id.unwrap();

    let replay = body(agent.get(&format!("/command/{id}/events")).send().await.unwrap()).await;
    assert!(
        replay == live,
        "replay of {} bytes differs from the live {}",
        replay.len(),
        live.len()
    );
    for after in [1, 2, 777, 40_000, last / 2, last - 2, last - 1] {
        let rest = body(
            agent
                .get(&format!("/command/{id}/events"))
                .header("Last-Event-ID", after.to_string())
                .send()
                .await
                .unwrap(),
        )
        .await;
        let start = text
            .find(&format!("\n\nid: {}\n", after + 1))
            .expect("event in the live stream")
            + 2;
        assert!(rest[..] == live[start..], "after {after}");
    }
}
