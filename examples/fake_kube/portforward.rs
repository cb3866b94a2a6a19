//! `pods/{name}/portforward` of OUR MODEL OF KUBERNETES (test-only), over WebSocket as the
//! apiserver and kubelet serve it to kube-rs: `GET …/portforward?ports=P1,P2` upgraded with
//! subprotocol `v4.channel.k8s.io` (the only one served here). Port `i` (in the order asked)
//! has data channel `2i` and error channel `2i+1`; every binary frame starts with its channel
//! byte, and the first frame on each channel is the port, two bytes little-endian. Each port
//! is bridged to one TCP connection to the pod's bridge IP (the kubelet dials `localhost`
//! inside the pod's network namespace; the difference: a server bound to 127.0.0.1 only is
//! reachable there, not here). A connection that fails sends the kubelet's message on the
//! error channel; the WebSocket closes once every port's connection has ended, or when the
//! client closes it. Async: one task per forward, its readers in a `JoinSet` it owns.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::docklet::{docker, Docklet};
use crate::store::ApiErr;

/// The subprotocol served.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

fn bad_request(message: String) -> ApiErr {
    ApiErr {
        code: 400,
        reason: "BadRequest",
        message,
    }
}

/// The ports of `?ports=`: comma-separated, 1–65535, at least one, no repeats.
fn ports(q: &HashMap<String, String>) -> Result<Vec<u16>, ApiErr> {
    let raw = q
        .get("ports")
        .ok_or_else(|| bad_request("query parameter \"ports\" is required".into()))?;
    let mut ports = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = part
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad_request(format!("invalid port {part:?}")))?;
        if ports.contains(&port) {
            return Err(bad_request(format!("port {port} is asked for twice")));
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return Err(bad_request("query parameter \"ports\" is required".into()));
    }
    Ok(ports)
}

/// Serves one port-forward request for `pod`: checks the ports and that the pod runs, then
/// upgrades and bridges.
pub async fn serve(
    docklet: &Docklet,
    pod: &Value,
    q: &HashMap<String, String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiErr> {
    let ports = ports(q)?;
    let field = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (name, uid) = (field("/metadata/name"), field("/metadata/uid"));
    if field("/status/phase") != "Running" {
        return Err(bad_request(format!("pod {name} is not running")));
    }
    let container = field("/spec/containers/0/name");
    let first = docklet.container_name(&name, &uid, &container);
    let ip = docker([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        first.as_str(),
    ])
    .await
    .ok()
    .filter(|ip| !ip.is_empty())
    .ok_or_else(|| bad_request(format!("pod {name} has no network")))?;
    let ws = ws.protocols([PROTOCOL]);
    if ws.selected_protocol().is_none() {
        return Err(bad_request(format!(
            "the fake serves port-forward only as {PROTOCOL}"
        )));
    }
    Ok(ws
        .on_upgrade(move |socket| bridge(socket, ip, ports, name, uid))
        .into_response())
}

/// A binary frame on `channel`.
fn frame(channel: u8, bytes: &[u8]) -> Message {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(channel);
    out.extend_from_slice(bytes);
    Message::Binary(Bytes::from(out))
}

/// What a port's reader reports: bytes from the pod, or its end.
enum FromPod {
    Data(usize, Bytes),
    End,
}

async fn bridge(mut socket: WebSocket, ip: String, ports: Vec<u16>, name: String, uid: String) {
    // Every channel opens with its port.
    for (i, port) in ports.iter().enumerate() {
        let prefix = port.to_le_bytes();
        for channel in [2 * i, 2 * i + 1] {
            if socket.send(frame(channel as u8, &prefix)).await.is_err() {
                return;
            }
        }
    }
    let (tx, mut from_pod) = mpsc::channel::<FromPod>(16);
    let mut readers = tokio::task::JoinSet::new();
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::with_capacity(ports.len());
    let mut open = 0usize;
    for (i, port) in ports.iter().enumerate() {
        match tokio::net::TcpStream::connect((ip.as_str(), *port)).await {
            Ok(stream) => {
                let (mut read, write) = stream.into_split();
                writers.push(Some(write));
                open += 1;
                let tx = tx.clone();
                readers.spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let bytes = Bytes::copy_from_slice(&buf[..n]);
                                if tx.send(FromPod::Data(i, bytes)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.send(FromPod::End).await;
                });
            }
            Err(e) => {
                writers.push(None);
                // The kubelet's wording.
                let message = format!(
                    "error forwarding port {port} to pod {name}, uid {uid}: failed to connect to localhost:{port} inside namespace: {e}"
                );
                if socket
                    .send(frame((2 * i + 1) as u8, message.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    drop(tx);
    while open > 0 {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 => {
                    let channel = usize::from(bytes[0]);
                    // Bytes on an error channel, or for a port whose connection failed, go
                    // nowhere (the kubelet ignores them likewise).
                    if channel % 2 == 0 {
                        if let Some(Some(w)) = writers.get_mut(channel / 2) {
                            if w.write_all(&bytes[1..]).await.is_err() {
                                writers[channel / 2] = None;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(event) = from_pod.recv() => match event {
                FromPod::Data(i, bytes) => {
                    if socket.send(frame((2 * i) as u8, &bytes)).await.is_err() {
                        break;
                    }
                }
                FromPod::End => open -= 1,
            },
        }
    }
    readers.abort_all();
    let _ = socket.send(Message::Close(None)).await;
}
