//! Access token: every route is guarded when a token is set, compared in constant time.

use serde_json::{json, Value};

use crate::util::{Agent, Opts};

#[tokio::test]
async fn token_missing_wrong_and_right() {
    let agent = Agent::start_with(Opts {
        token: Some("s3cret-token".into()),
        ..Opts::default()
    });
    let bare = reqwest::Client::new();

    let missing = bare.get(agent.url("/ping")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHORIZED");
    assert_eq!(
        body["error"],
        "Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN"
    );

    for wrong in ["s3cret-tokem", "s3cret-token-", "", "S3CRET-TOKEN"] {
        let resp = bare
            .post(agent.url("/command"))
            .header("X-EXECD-ACCESS-TOKEN", wrong)
            .json(&json!({"command": "touch /tmp/should-not-exist"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "token {wrong:?}");
    }
    // Unknown routes and sessions are guarded too (no information before auth).
    assert_eq!(
        bare.post(agent.url("/session")).send().await.unwrap().status(),
        401
    );
    assert_eq!(bare.get(agent.url("/nope")).send().await.unwrap().status(), 401);

    assert_eq!(agent.get("/ping").send().await.unwrap().status(), 200);
    let events = agent.run(json!({"command": "echo authed"})).await;
    assert_eq!(crate::util::texts(&events, "stdout"), ["authed"]);
}

#[tokio::test]
async fn no_token_configured_means_open() {
    let agent = Agent::start();
    let resp = reqwest::get(agent.url("/ping")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
}

#[tokio::test]
async fn token_never_reaches_commands() {
    // Set through the environment, where children would inherit it if execd did not strip it.
    let agent = Agent::start_with(Opts {
        token: Some("hidden-value-123".into()),
        env: vec![("EXECD_ACCESS_TOKEN".into(), "hidden-value-123".into())],
        ..Opts::default()
    });
    let events = agent
        .run(json!({"command": "env; cat /proc/self/environ | tr '\\0' '\\n'"}))
        .await;
    let out = crate::util::texts(&events, "stdout").join("\n");
    assert!(
        !out.contains("hidden-value-123"),
        "token leaked into a command's environment"
    );
    assert!(!out.contains("EXECD_ACCESS_TOKEN"));
}
