//! The HTTP/1 server loop both binaries can use in place of `axum::serve`: the same router,
//! plus limits that hold before any handler (and so before authentication) sees a request.
//! Async; knows nothing of either binary's routes.
//!
//! - **Headers:** a connection that has not sent a complete request head within
//!   [`Limits::header_read_timeout`] is closed. The deadline runs while hyper waits for a head,
//!   so it is also how long an idle keep-alive connection lives.
//! - **Bodies:** a handler waiting for request body bytes that do not come for
//!   [`Limits::body_idle_timeout`] gets an error ([`BodyIdleTimeout`]); an upload that keeps
//!   sending is never cut, however long it lasts.
//! - **Connections:** at most [`Limits::max_connections`] are served at once; the rest wait in
//!   the kernel's accept queue.
//!
//! Responses are never limited: an SSE stream or a proxied download may run for hours, and a
//! WebSocket leaves this loop (and its count) once upgraded.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

/// What a server tolerates from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request head (and how long an idle keep-alive
    /// connection is kept).
    pub header_read_timeout: Duration,
    /// How long a handler waits for the next bytes of a request body.
    pub body_idle_timeout: Duration,
    /// Connections served at once. Lowered at start to leave file descriptors for everything
    /// else when `RLIMIT_NOFILE` is smaller (see [`serve`]).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// File descriptors kept free of connections for pipes, journals, files and kernels.
const SPARE_FDS: u64 = 256;

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then stops accepting,
/// asks every connection to finish its current response, and returns once they all have.
///
/// Every request carries `ConnectInfo<SocketAddr>` (as with
/// `into_make_service_with_connect_info`) and connections get `TCP_NODELAY`: without it the
/// small frame that ends a response waits for the client's delayed ACK (~40 ms).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max_connections = limits.max_connections.min(fd_budget()).max(1);
    tracing::debug!(?limits, max_connections, "serving");
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Connections are owned here: dropping the server (init mode) aborts them.
    let mut connections = JoinSet::new();
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((tcp, remote, permit)) = accepted else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let body_idle = limits.body_idle_timeout;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            app.clone()
                .oneshot(req.map(|body| Body::new(IdleTimeoutBody::new(body, body_idle))))
        });
        let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    stop.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The next connection, once one may be served. `None` after an accept error, which is
/// logged (and, when descriptors or memory ran out, waited out briefly rather than spun on).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    // The semaphore is never closed.
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, remote)) => Some((tcp, remote, permit)),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            if !is_connection_error(&e) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    }
}

/// Errors that concern one connection only (the next accept may well succeed at once).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// How many connections the descriptor limit leaves room for.
fn fd_budget() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.saturating_sub(SPARE_FDS).try_into().unwrap_or(usize::MAX),
        Err(_) => usize::MAX,
    }
}

/// A request body whose client went quiet for longer than the body idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for more than {0:?}")]
pub struct BodyIdleTimeout(pub Duration);

/// Whether `err` (as a handler or extractor sees a body error) is a [`BodyIdleTimeout`].
pub fn is_body_idle_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<BodyIdleTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request body that fails with [`BodyIdleTimeout`] when a reader waits longer than `idle`
/// for its next frame. The clock runs only while someone waits: a handler that is slow to
/// read (a full disk channel) never times its client out.
struct IdleTimeoutBody {
    inner: Incoming,
    idle: Duration,
    /// Allocated at the first wait, then reset for each later one.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `deadline` belongs to the current wait.
    waiting: bool,
}

impl IdleTimeoutBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: None,
            waiting: false,
        }
    }
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let until = tokio::time::Instant::now() + this.idle;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if !this.waiting {
            deadline.as_mut().reset(until);
            this.waiting = true;
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdleTimeout(this.idle))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_idle_timeout_is_found_through_wrapping_errors() {
        let wrapped = axum::Error::new(BodyIdleTimeout(Duration::from_secs(1)));
        assert!(is_body_idle_timeout(&wrapped));
        let other = std::io::Error::other("boom");
        assert!(!is_body_idle_timeout(&other));
    }
}
