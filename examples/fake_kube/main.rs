//! `fake_kube`: OUR MODEL OF KUBERNETES, for tests only. Not a Kubernetes API server: an axum
//! server that answers the REST calls kube-rs makes for Pods, Secrets, ConfigMaps, Events,
//! PersistentVolumeClaims (and DaemonSets, stored only) with the apiserver's semantics where
//! sandboxd depends on them (resourceVersion, conflicts, patches, selectors, watch, 410 Gone,
//! ownerReference garbage collection), and a "docklet" that runs each Pod on the local Docker
//! engine. What it implements and what it does not: docs/fake-kube.md.
//!
//! ```text
//! fake_kube --listen 127.0.0.1:0 --kubeconfig-out /tmp/kubeconfig [--docker-label fake-kube-test]
//! ```
//!
//! prints `listening on ADDR`, writes a kubeconfig for it (plain HTTP, no credentials), and on
//! SIGTERM or SIGINT removes every Docker container and volume it created (all carry the label
//! `fake-kube=<--docker-label>`) before it exits.

mod api;
mod containers;
mod docklet;
mod portforward;
mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "fake_kube",
    about = "A test-only model of the Kubernetes API server whose pods run on Docker"
)]
struct Cli {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this server.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// The namespace the kubeconfig's context selects.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Value of the `fake-kube` label on every Docker object created (removed at exit).
    #[arg(long, default_value = "fake-kube")]
    docker_label: String,
    /// Where ConfigMap and Secret volumes are written [default: a temp dir].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Watch events kept for watches that resume; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 1000)]
    watch_history: usize,
    /// Report pod IPs from 192.0.2.0/24 (TEST-NET-1, routed nowhere) instead of the
    /// containers' bridge IPs, so that only a client going through `pods/portforward` reaches
    /// a pod (the docklet's own probes still use the real address).
    #[arg(long)]
    unroutable_pod_ips: bool,
}

fn kubeconfig(addr: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake-kube
  cluster:
    server: http://{addr}
contexts:
- name: fake-kube
  context:
    cluster: fake-kube
    user: fake-kube
    namespace: {namespace}
current-context: fake-kube
users:
- name: fake-kube
  user: {{}}
"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let state_dir = match cli.state_dir {
        Some(dir) => dir,
        None => tempfile_dir()?,
    };
    std::fs::create_dir_all(&state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    let store = Arc::new(store::Store::new(cli.watch_history));
    let docklet = docklet::Docklet::new(
        Arc::clone(&store),
        cli.docker_label,
        state_dir,
        cli.unroutable_pod_ips,
    );
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &cli.kubeconfig_out {
        std::fs::write(path, kubeconfig(addr, &cli.namespace))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    let app = api::router(api::Ctx {
        store,
        docklet: Arc::clone(&docklet),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // Open watches and followed logs never end by themselves, so a graceful shutdown would
    // wait for ever: stop serving at the signal and clean up.
    tokio::select! {
        r = axum::serve(listener, app) => r.context("server failed")?,
        () = shutdown => {}
    }
    docklet.shutdown().await;
    Ok(())
}

/// A fresh private directory under the temp dir.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fake-kube-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
