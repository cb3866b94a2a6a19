//! The port-forward endpoint mode (feature `k8s-portforward`), for a sandboxd outside the
//! cluster that cannot route to pod IPs: every connection sandboxd makes to a sandbox port is
//! its own `pods/{name}/portforward?ports=P` WebSocket through the API server (kube-rs
//! `Api::<Pod>::portforward`: subprotocol `v4.channel.k8s.io`, a data and an error channel
//! per port, each opened by a frame holding the port), handed to the service as a
//! runtime-neutral [`Tunnel`]. Clients are given the server proxy, never the pod address.
//! Async.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use super::super::{Dial, Target, Tunnel, TunnelIo, EXECD_PORT};

/// How long opening one forwarded connection (the WebSocket upgrade) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to dial `port` of pod `pod`: a tunnel through the API server; no address for
/// clients (the service then hands out the server proxy).
pub fn target(pods: Api<Pod>, pod: &str, port: u16) -> Target {
    Target {
        dial: Dial::Tunnel(tunnel(pods, pod, port)),
        public: None,
        prefix: String::new(),
        execd: port == EXECD_PORT,
    }
}

/// A tunnel to `port` of pod `pod`: each connection a port-forward of its own.
fn tunnel(pods: Api<Pod>, pod: &str, port: u16) -> Tunnel {
    let name = format!("pod {pod} port {port} (port-forward)");
    let pod = pod.to_owned();
    Tunnel::new(name, port, move || {
        let (pods, pod) = (pods.clone(), pod.clone());
        async move {
            let stream = tokio::time::timeout(OPEN_TIMEOUT, open(&pods, &pod, port))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no port-forward to pod {pod} within {OPEN_TIMEOUT:?}"),
                    )
                })??;
            Ok::<_, io::Error>(Box::new(stream) as Box<dyn TunnelIo>)
        }
        .boxed()
    })
}

/// Opens one port-forward to `port` of pod `pod`.
async fn open(pods: &Api<Pod>, pod: &str, port: u16) -> io::Result<PortStream> {
    let mut forwarder = pods.portforward(pod, &[port]).await.map_err(|e| {
        let kind = match &e {
            kube::Error::Api(s) if s.code == 404 => io::ErrorKind::NotFound,
            _ => io::ErrorKind::ConnectionRefused,
        };
        io::Error::new(kind, format!("port-forward to pod {pod}: {e}"))
    })?;
    // Both are there: the forwarder was made for exactly this port.
    let missing = || io::Error::other(format!("port-forward to pod {pod}: no stream for port {port}"));
    let stream = forwarder.take_stream(port).ok_or_else(missing)?;
    let error = forwarder.take_error(port).ok_or_else(missing)?.boxed();
    Ok(PortStream {
        stream,
        error: Some(error),
        forwarder,
    })
}

/// One forwarded connection: the port's byte stream, whose end after an error on the port's
/// error channel (nothing listens on the port, the pod is gone) is that error rather than a
/// plain EOF.
struct PortStream {
    stream: DuplexStream,
    /// The port's error channel: resolves with the server's message, or `None` when the
    /// connection ended without one.
    error: Option<BoxFuture<'static, Option<String>>>,
    /// Owns kube-rs's message loop, aborted on drop so that no WebSocket outlives its use.
    forwarder: Portforwarder,
}

impl Drop for PortStream {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl AsyncRead for PortStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            // EOF: the server's error, if it sent one, comes before its close (kube-rs reads
            // the WebSocket's frames in order), so it is there by now.
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                if let Some(Poll::Ready(Some(message))) = this.error.as_mut().map(|e| e.poll_unpin(cx)) {
                    this.error = None;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionRefused, message)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
